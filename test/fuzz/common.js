'use strict';
// Shared bits for the native fuzzer (plain JS, no build step).
const path = require('path');
// NPMU_NATIVE_PATH: load another build of the addon (e.g. an ASan build)
const n = process.env.NPMU_NATIVE_PATH
  ? require(path.resolve(process.env.NPMU_NATIVE_PATH))
  : require('bindings')({ bindings: 'npmu_native', module_root: path.join(__dirname, '..', '..') });

class VerbsError extends Error {
  constructor(message, code, errno, syscall) {
    super(message);
    this.code = code;
    this.errno = errno;
    this.syscall = syscall;
  }
  get name() {
    return 'VerbsError';
  }
}
n.init(VerbsError);

let failures = 0;
function ok(cond, what) {
  if (cond) console.log('ok -', what);
  else {
    failures++;
    console.log('NOT OK -', what);
  }
}
function throwsCode(fn, code, what, cls) {
  try {
    fn();
  } catch (e) {
    const good = e.code === code && (!cls || e instanceof cls);
    ok(good, `${what} -> ${e.constructor.name} ${e.code}${good ? '' : ' (wanted ' + code + '): ' + e.message}`);
    return e;
  }
  ok(false, `${what} did not throw (wanted ${code})`);
}
async function rejectsCode(p, code, what) {
  try {
    await p;
  } catch (e) {
    const good = e.code === code;
    ok(good, `${what} -> ${e.code}${good ? '' : ' (wanted ' + code + '): ' + e.message}`);
    return e;
  }
  ok(false, `${what} did not reject (wanted ${code})`);
}
function done() {
  console.log(failures ? `# ${failures} FAILED` : '# all passed');
  process.exitCode = failures ? 1 : 0;
}
module.exports = { n, VerbsError, ok, throwsCode, rejectsCode, done, get failures() { return failures; } };
