// The status page: one self-contained document, no build step, nothing fetched from outside.
export const STATUS_PAGE = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>edge-proxy status</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:1.5rem;color:#222;background:#fafafa}
h1{font-size:1.3rem;margin:0 0 1rem}
section{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.8rem 1rem;margin:0 0 1rem;max-width:46rem}
h2{font-size:1rem;margin:0 0 .5rem}
table{border-collapse:collapse}td{padding:.15rem 1.2rem .15rem 0}td:first-child{color:#666}
.ok{color:#0a7a2f}.bad{color:#b3261e}
</style></head><body>
<h1>edge-proxy <span id="edge"></span></h1>
<section><h2>Devices and messages</h2><table id="traffic"></table></section>
<section><h2>Cloud uplink</h2><table id="uplink"></table></section>
<section><h2>Offline cache</h2><table id="cache"></table></section>
<p id="err" class="bad"></p>
<script>
function rows(id, pairs){document.getElementById(id).innerHTML=pairs.map(function(p){return '<tr><td>'+p[0]+'</td><td>'+p[1]+'</td></tr>'}).join('')}
function dur(s){if(s==null)return '-';if(s<60)return s.toFixed(0)+' s';if(s<3600)return (s/60).toFixed(1)+' min';return (s/3600).toFixed(1)+' h'}
function tick(){fetch('/api/v1/status').then(function(r){return r.json()}).then(function(s){
document.getElementById('edge').textContent=s.edgeId+' · v'+s.version+' · up '+dur(s.uptimeSeconds);
rows('traffic',[['auth',s.auth.mode==='token'?'token, '+s.auth.devices+' registered':'open (trial)'],['MQTT devices',s.devices.mqtt],['received /s',s.rates.receivedPerSecond.toFixed(1)],['sent up /s',s.rates.ackedPerSecond.toFixed(1)]]);
var u=s.uplink;rows('uplink',[['broker',u.url||'none (offline mode)'],['state',u.connected?'<span class=ok>connected</span>':'<span class=bad>not connected</span>'],['in flight',u.inflight]]);
var c=s.cache;rows('cache',[['backlog',c.messages+' messages'],['bytes',c.bytes],['oldest',dur(c.oldestAgeSeconds)],['writable',c.writable?'<span class=ok>yes</span>':'<span class=bad>no</span>'],['time to drain',c.timeToDrainSeconds==null?'-':dur(c.timeToDrainSeconds)]]);
document.getElementById('err').textContent='';}).catch(function(e){document.getElementById('err').textContent='status unavailable: '+e});}
tick();setInterval(tick,2000);
</script></body></html>`;
