// A real browser for tests of what a user sees: Debian's Chromium (apt-get install chromium, as .ci/run
// does) driven through playwright-core, which downloads no browser of its own.
import { chromium, type Browser, type BrowserContext, type Locator, type Page } from 'playwright-core';

export const CHROMIUM = process.env.CHROMIUM_BIN ?? '/usr/bin/chromium';

// Headless, and nothing of its own on the network: no component updates, sync or first-run pages.
// --no-sandbox: tests may run as root, where Chromium refuses its sandbox.
export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--disable-gpu',
  '--no-first-run',
];

/**
 * Launches Chromium. Each launch gets a fresh temporary profile (playwright-core makes one per launch
 * and removes it on close), so no cookie or storage survives from one launch to the next. The caller
 * closes it in t.teardown; if a test times out and skips its teardown, playwright-core kills the
 * browser when the test process exits.
 */
export async function launchBrowser(): Promise<Browser> {
  return chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, timeout: 20_000 });
}

/** Something the page reported that a user would see in the developer tools. */
export interface PageProblem {
  kind: 'pageerror' | 'console';
  text: string;
  /** for a console message, the document or resource it is about */
  url: string;
}

export interface WatchedPage {
  page: Page;
  /** every uncaught script error and every console message of type error, in order */
  problems: PageProblem[];
  /** every response the page received, in order */
  responses: Array<{ path: string; status: number }>;
}

/**
 * A new page in `context`, with its script errors, console errors and responses recorded from the
 * start. Actions and waits that take longer than `timeoutMs` fail rather than hang the test.
 */
export async function openPage(context: BrowserContext, timeoutMs = 10_000): Promise<WatchedPage> {
  const page = await context.newPage();
  page.setDefaultTimeout(timeoutMs);
  const problems: PageProblem[] = [];
  const responses: WatchedPage['responses'] = [];
  page.on('pageerror', (err) => problems.push({ kind: 'pageerror', text: String(err.stack ?? err), url: page.url() }));
  page.on('console', (msg) => {
    if (msg.type() === 'error') problems.push({ kind: 'console', text: msg.text(), url: msg.location().url });
  });
  page.on('response', (res) => responses.push({ path: new URL(res.url()).pathname, status: res.status() }));
  return { page, problems, responses };
}

// What the functions below use of the browser's globals (test/tsconfig.json has no DOM library).
interface BrowserGlobals {
  getComputedStyle(element: unknown): { color: string };
  sessionStorage: { length: number; key(index: number): string | null; getItem(key: string): string | null };
}

/** The colour an element is drawn in, as the browser computed it (`rgb(r, g, b)`). */
export function colourOf(locator: Locator): Promise<string> {
  return locator.evaluate((element) => (globalThis as unknown as BrowserGlobals).getComputedStyle(element).color);
}

/** Every value the page's origin keeps in this tab's sessionStorage. */
export function sessionValues(page: Page): Promise<string[]> {
  return page.evaluate(() => {
    const storage = (globalThis as unknown as BrowserGlobals).sessionStorage;
    const values: string[] = [];
    for (let i = 0; i < storage.length; i++) values.push(storage.getItem(storage.key(i) ?? '') ?? '');
    return values;
  });
}

/** One WebSocket a page opened, as the browser saw it (text frames as text, binary ones as base64). */
export interface PageWebSocket {
  url: string;
  /** the frames the page sent, in order */
  sent: string[];
  /** the frames the page received, in order */
  received: string[];
  /** socket errors the browser reported (a refused upgrade among them) */
  errors: string[];
  closed: boolean;
}

/**
 * Records every WebSocket `page` opens from now on, frame by frame, without touching the page or its
 * traffic (the browser reports the frames through the DevTools protocol). `onReceived`, when given,
 * runs as each received frame is reported, before anything else of the test runs.
 */
export function recordWebSockets(page: Page, onReceived?: (frame: string, socket: PageWebSocket) => void): PageWebSocket[] {
  const sockets: PageWebSocket[] = [];
  const text = (payload: string | Buffer): string => (typeof payload === 'string' ? payload : payload.toString('base64'));
  page.on('websocket', (ws) => {
    const socket: PageWebSocket = { url: ws.url(), sent: [], received: [], errors: [], closed: false };
    sockets.push(socket);
    ws.on('framesent', ({ payload }) => socket.sent.push(text(payload)));
    ws.on('framereceived', ({ payload }) => {
      socket.received.push(text(payload));
      onReceived?.(text(payload), socket);
    });
    ws.on('socketerror', (error) => socket.errors.push(error));
    ws.on('close', () => (socket.closed = true));
  });
  return sockets;
}
