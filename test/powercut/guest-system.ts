/**
 * What the power-cut guests share: two units on the VM's emulated NVDIMMs,
 * a PMM on them and a volume, all in the guest's one process (the power cut
 * takes them all). Both boots of a test must use the same key.
 */
import { UnitDevice } from '../../unit/device';
import { UnitServer } from '../../unit/server';
import { PmmServer } from '../../pmm/server';
import { ClientRegistry, clientLine, parseClients } from '../../pmm/credentials';
import { ControlConnection } from '../../lib/protocol';
import { daxDevices, deviceName, rdmaAddress } from '../rdma/fixture';

export interface GuestSystem {
  key: Buffer;
  clients: ClientRegistry;
  /** Two units on /dev/dax0.0 and /dev/dax1.0, formatted afresh or as found; shadow: test-only shadow mode. */
  units(format: boolean, shadow?: boolean): Promise<UnitServer[]>;
  /** A PMM given the units' addresses (it recovers what they hold). */
  pmmOn(u: UnitServer[]): Promise<PmmServer>;
  /** Creates volume `name` on the two units through the PMM. */
  createVolume(pmm: PmmServer, u: UnitServer[], name: string): Promise<void>;
}

/** A guest system for one test: its key (a test key, the same in both boots), its one client and a label for its units. */
export function guestSystem(o: { keyByte: number; client: string; secret: string; label: string }): GuestSystem {
  const key = Buffer.alloc(32, o.keyByte);
  const clients = new ClientRegistry({ entries: parseClients(clientLine(o.client, o.secret, { logN: 4 })) });
  const address = (x: UnitServer) => ({ host: x.host, controlPort: x.controlPort, rdmaPort: x.rdmaPort });
  return {
    key,
    clients,
    async units(format, shadow = false) {
      const devs = daxDevices();
      if (devs.length < 2) throw new Error('need two NVDIMMs (NPMU_DAX_DEVICES)');
      const out: UnitServer[] = [];
      for (const d of devs.slice(0, 2)) {
        const device = UnitDevice.open(d, format ? { format: { label: o.label }, force: true } : {});
        out.push(await UnitServer.start({ device, key, host: rdmaAddress(), rdmaDevice: deviceName(), shadow }));
      }
      return out;
    },
    pmmOn(u) {
      return PmmServer.start({ key, clients, host: rdmaAddress(), port: 0, units: u.map(address) });
    },
    async createVolume(pmm, u, name) {
      const admin = await ControlConnection.connect({ host: rdmaAddress(), port: pmm.port });
      try {
        await admin.request('create-volume', { volume: name, primary: address(u[0]!), mirror: address(u[1]!), force: true });
      } finally {
        admin.close();
      }
    },
  };
}
