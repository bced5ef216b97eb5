/** Lifetimes: close with work pending, refusal to free what is in use,
 * finalizers, process exit and worker termination with everything open. */
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import t from 'tap';
import { connectedPair, regAll } from './fixture';
import { native } from '../../lib/verbs';

t.test('close() with a RECV pending: the RECV flushes, then close resolves', async (t) => {
  const p = await connectedPair();
  const buf = Buffer.alloc(64);
  const mr = regAll(p.server.pd, buf);
  const pending = p.server.recv(mr, 0, 64);
  t.equal(p.server.inFlight, 1);
  t.throws(() => mr.close(), { code: 'ERR_NPMU_BUSY' }, 'MR in use by a posted RECV cannot be deregistered');
  const closed = p.server.close();
  await t.rejects(pending, { code: 'IBV_WC_WR_FLUSH_ERR' }, 'pending RECV flushed');
  await closed;
  t.equal(p.server.state, 'closed');
  t.equal(p.server.inFlight, 0);
  mr.close();
  t.equal(mr.closed, true);
  await p.server.close(); // idempotent
  await p.close();
});

t.test('a peer that closes shows up as a disconnected event', async (t) => {
  const p = await connectedPair();
  // An idle connection does not hold the event loop open (like an unref'd
  // socket): keep the process up while we wait for the event.
  const keepAlive = setInterval(() => undefined, 1000);
  const ev = new Promise<string>((resolve) => {
    p.server.onEvent = (e) => resolve(e.type);
  });
  await p.client.close();
  t.equal(await ev, 'disconnected');
  clearInterval(keepAlive);
  t.equal(p.server.state, 'disconnected');
  await p.close();
});

t.test('parents refuse to close under live children', async (t) => {
  const p = await connectedPair();
  t.throws(() => p.serverPd.close(), { code: 'ERR_NPMU_BUSY' }, 'PD with a live endpoint');
  await p.server.close();
  const mr = regAll(p.serverPd, Buffer.alloc(4096));
  t.throws(() => p.serverPd.close(), { code: 'ERR_NPMU_BUSY' }, 'PD with a live MR');
  mr.close();
  await p.close();
  t.equal(p.serverPd.closed, true);
  t.doesNotThrow(() => p.serverPd.close(), 'close is idempotent');
  await t.rejects(async () => p.client.write(mr, 0, 1, 0n, 0), { code: /ERR_NPMU_(CLOSED|ENDPOINT_STATE)/ }, 'closed endpoint');
});

const child = path.join(__dirname, 'lifecycle-child.js');
function runChild(mode: string): { status: number | null; out: string } {
  const r = spawnSync(process.execPath, ['--expose-gc', child, mode], { encoding: 'utf8', env: process.env, timeout: 300_000 });
  return { status: r.status, out: `${r.stdout}${r.stderr}` };
}

t.test('GC finalizers release forgotten PDs, MRs and mappings', async (t) => {
  const r = runChild('gc');
  t.equal(r.status, 0, r.out);
  t.match(r.out, /live after gc: 0/);
});

t.test('process exit with everything open exits cleanly', async (t) => {
  const r = runChild('exit');
  t.equal(r.status, 0, r.out);
  t.match(r.out, /open, exiting/);
});

t.test('a worker thread terminated with everything open', async (t) => {
  const r = runChild('worker');
  t.equal(r.status, 0, r.out);
  t.match(r.out, /worker terminated/);
});

t.test('a connected peer process killed with SIGKILL: the survivor sees disconnected', async (t) => {
  const r = runChild('peer-dies');
  t.equal(r.status, 0, r.out);
  t.match(r.out, /survivor saw disconnected/);
});

t.test('nothing leaked by this file', async (t) => {
  const live = native().liveObjects();
  t.same({ endpoints: live.endpoints, listeners: live.listeners }, { endpoints: 0, listeners: 0 });
});
