/** A client process for unit.test: connects to a unit with the ticket given
 * (hex) and waits to be killed, so the unit sees a client die ([0085]). */
import { connect } from '../../lib/verbs';

const [host, port, ticketHex] = process.argv.slice(2);
connect({ host: host!, port: Number(port), privateData: Buffer.from(ticketHex!, 'hex'), timeoutMs: 20_000 }).then(
  (ep) => {
    console.log('connected');
    ep.onEvent = () => undefined;
    setInterval(() => undefined, 1000);
  },
  (err) => {
    console.error(err);
    process.exit(1);
  },
);
