/** Child processes for lifecycle.test: each mode leaves things open on purpose. */
import { Worker } from 'node:worker_threads';
import { spawn } from 'node:child_process';
import { connectedPair, regAll, tmpfsFile, rdmaAddress } from './fixture';
import { native, mapFile, openContext, newProtectionDomain, connect, listen, registerMemory } from '../../lib/verbs';

declare const gc: () => void;
const mode = process.argv[2];

async function main(): Promise<void> {
  switch (mode) {
    case 'gc': {
      const f = tmpfsFile(1 << 16);
      (() => {
        const ctx = openContext(process.env.NPMU_RXE_DEV ?? 'rxe0');
        for (let i = 0; i < 20; i++) {
          const pd = newProtectionDomain(ctx);
          regAll(pd, Buffer.alloc(4096));
          const m = mapFile(f.path);
          registerMemory(pd, m, { access: 1 });
          m.buffer();
        }
      })();
      for (let i = 0; i < 10; i++) {
        gc();
        await new Promise((r) => setImmediate(r));
      }
      const live = native().liveObjects();
      f.remove();
      console.log(`live after gc: ${live.pds + live.mrs + live.mappings}`, live);
      return;
    }
    case 'exit': {
      const p = await connectedPair();
      const mr = regAll(p.serverPd, Buffer.alloc(4096));
      void p.server.recv(mr, 0, 64); // left pending
      mapFile(tmpfsFile(1 << 16).path);
      const l = listen({ host: rdmaAddress(), port: 0 });
      l.onRequest = () => undefined;
      console.log('open, exiting');
      process.exit(0);
    }
    // falls through (unreachable)
    case 'worker': {
      const w = new Worker(
        `const { parentPort } = require('node:worker_threads');
         const { connectedPair, regAll } = require(${JSON.stringify(__dirname + '/fixture.js')});
         connectedPair().then((p) => { const mr = regAll(p.serverPd, Buffer.alloc(4096)); p.server.recv(mr, 0, 8).catch(() => {}); parentPort.postMessage('open'); });`,
        { eval: true, env: process.env },
      );
      await new Promise<void>((resolve, reject) => {
        w.once('message', () => resolve());
        w.once('error', reject);
      });
      await w.terminate();
      console.log('worker terminated');
      // The main environment still works after the worker's teardown.
      const p = await connectedPair();
      await p.close();
      return;
    }
    case 'peer-dies': {
      const l = listen({ host: rdmaAddress(), port: 0 });
      const got = new Promise<void>((resolve, reject) => {
        l.onRequest = (req) => {
          req.accept().then((ep) => {
            ep.onEvent = (e) => {
              if (e.type === 'disconnected') {
                console.log('survivor saw disconnected');
                void ep.close().then(resolve, reject);
              }
            };
            kid.kill('SIGKILL');
          }, reject);
        };
      });
      const kid = spawn(process.execPath, [__filename, 'connect-and-wait', String(l.port)], { stdio: 'inherit', env: process.env });
      await got;
      l.close();
      return;
    }
    case 'connect-and-wait': {
      const ep = await connect({ host: rdmaAddress(), port: Number(process.argv[3]) });
      void ep;
      setInterval(() => undefined, 1000);
      return;
    }
    default:
      throw new Error(`unknown mode ${mode}`);
  }
}

main().then(
  () => {
    if (mode !== 'connect-and-wait') process.exitCode = 0;
  },
  (e) => {
    console.error(e);
    process.exit(1);
  },
);
