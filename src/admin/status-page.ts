// The status page: one self-contained document, no build step, nothing fetched from outside.
// It is static and reveals nothing, so it is served without a token; the data comes from
// /api/v1/status. When that answers 401 (the admin port bound beyond loopback), the page asks for the
// admin token, keeps it in the tab's sessionStorage (until the tab is closed) and sends it as a bearer token.
// The empty inline icon keeps browsers from asking for /favicon.ico, which is no route (401 beyond
// loopback, 404 on it): an error in the browser's console at every load otherwise. The status shows
// once it has data: never as empty tables while the page waits for the proxy or tries a token.
export const STATUS_PAGE = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>edge-proxy status</title>
<link rel="icon" href="data:,">
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:1.5rem;color:#222;background:#fafafa}
h1{font-size:1.3rem;margin:0 0 1rem}
section,form{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.8rem 1rem;margin:0 0 1rem;max-width:46rem}
h2{font-size:1rem;margin:0 0 .5rem}
table{border-collapse:collapse}td{padding:.15rem 1.2rem .15rem 0;vertical-align:top}td:first-child{color:#666}
input{font:inherit;padding:.2rem .4rem;width:22rem;max-width:100%}button{font:inherit;margin-left:.4rem}
code{font-size:.95em}
.ok{color:#0a7a2f}.bad{color:#b3261e}.neutral{color:#555}
[hidden]{display:none!important}
</style></head><body>
<h1>edge-proxy <span id="edge"></span></h1>
<form id="login" hidden>
<h2>Admin token</h2>
<p>This admin port is reachable beyond the proxy's machine, so its status needs the admin token: the file
<code>admin-token</code> in the proxy's data directory (<code>sudo cat /var/lib/edge-proxy/admin-token</code> on a board),
or what <code>admin.token</code> or <code>admin.tokenFile</code> sets. This tab keeps it until it is closed.</p>
<p id="loginmsg" class="bad"></p>
<input id="token" type="password" autocomplete="off" aria-label="admin token" required><button type="submit">Show the status</button>
</form>
<div id="main" hidden>
<section><h2>Proxy</h2><table id="proxy"></table></section>
<section><h2>Devices and messages</h2><table id="traffic"></table></section>
<section><h2>Cloud uplink</h2><table id="uplink"></table></section>
<section><h2>Offline cache</h2><table id="cache"></table></section>
<section><h2>Models</h2><table id="models"></table></section>
<p><button type="button" id="forget" hidden>Forget the admin token</button></p>
</div>
<p id="err" class="bad"></p>
<script>
var KEY='edge-proxy-admin-token',waiting=false;
function el(id){return document.getElementById(id)}
function esc(v){return String(v).replace(/[&<>"']/g,function(c){return {'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;',"'":'&#39;'}[c]})}
function rows(id,pairs){el(id).innerHTML=pairs.map(function(p){return '<tr><td>'+p[0]+'</td><td>'+p[1]+'</td></tr>'}).join('')}
function dur(s){if(s==null)return '-';if(s<60)return s.toFixed(0)+' s';if(s<3600)return (s/60).toFixed(1)+' min';return (s/3600).toFixed(1)+' h'}
function ask(msg){waiting=true;el('main').hidden=true;el('login').hidden=false;el('loginmsg').textContent=msg;el('err').textContent='';el('token').focus()}
function render(s){
el('edge').textContent=s.edgeId+' · v'+s.version+' · up '+dur(s.uptimeSeconds);
var a=s.auth,r=s.rules;
rows('proxy',[['auth mode',a.mode==='token'?'token: '+a.devices+' registered device'+(a.devices===1?'':'s'):'open (trial setting): any client connects as any device'],
['rules',r?'version '+r.version+', '+r.rules+' rule'+(r.rules===1?'':'s')+', sha256 <code>'+esc(r.sha256.slice(0,12))+'</code>':'none loaded: every message follows routing.default']]);
rows('traffic',[['MQTT devices',s.devices.mqtt],['received /s',s.rates.receivedPerSecond.toFixed(1)],['sent up /s',s.rates.ackedPerSecond.toFixed(1)]]);
var u=s.uplink;
rows('uplink',u.url===null?[['state','<span class=neutral>offline (no uplink configured): what would go up stays in the cache</span>']]:
[['broker',esc(u.url)],['state',u.connected?'<span class=ok>connected</span>':'<span class=bad>not connected</span>'],['in flight',u.inflight]]);
var c=s.cache;rows('cache',[['backlog',c.messages+' message'+(c.messages===1?'':'s')],['bytes',c.bytes],['oldest',dur(c.oldestAgeSeconds)],['writable',c.writable?'<span class=ok>yes</span>':'<span class=bad>no</span>'],['time to drain',c.timeToDrainSeconds==null?'-':dur(c.timeToDrainSeconds)]]);
var m=s.models||[];rows('models',m.length===0?[['-','none in the models directory: infer() fails until one is there']]:m.map(function(x){
var labels=Object.keys(x.byLabel).map(function(k){return esc(k)+' '+x.byLabel[k]}).join(', ')||'no results yet';
var lat=x.latencyMs?', p50 '+x.latencyMs.p50.toFixed(1)+' ms, p99 '+x.latencyMs.p99.toFixed(1)+' ms':'';
var err=x.error?' <span class=bad>'+esc(x.error)+'</span>':'';
var bad=(x.errors?', '+x.errors+' dropped':'')+(x.shed?', '+x.shed+' shed':'');
return [esc(x.name),x.state==='ready'?'<span class=ok>v'+esc(x.version)+'</span>: '+labels+lat+bad+err:'<span class=bad>not loaded</span>'+err]}));
el('main').hidden=false;el('err').textContent='';}
function tick(){if(waiting)return;
var t=sessionStorage.getItem(KEY);el('forget').hidden=!t;
fetch('/api/v1/status',{cache:'no-store',headers:t?{'Authorization':'Bearer '+t}:{}}).then(function(res){
if(res.status===401){if(waiting)return null;if(t){sessionStorage.removeItem(KEY);ask('The proxy did not accept that token: check it and enter it again.')}else ask('');return null}
if(!res.ok)throw new Error('HTTP '+res.status);return res.json()}).then(function(s){if(s&&!waiting)render(s)})
.catch(function(e){el('err').textContent='status unavailable: '+e})}
el('login').addEventListener('submit',function(e){e.preventDefault();var v=el('token').value.trim();if(!v)return;
sessionStorage.setItem(KEY,v);el('token').value='';waiting=false;el('login').hidden=true;tick()});
el('forget').addEventListener('click',function(){sessionStorage.removeItem(KEY);location.reload()});
tick();setInterval(tick,2000);
</script></body></html>`;
