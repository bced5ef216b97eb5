#include "util/errors.h"

#include <infiniband/verbs.h>

#include <cerrno>
#include <cmath>
#include <cstring>

#include "addon_data.h"

namespace npmu {

namespace {

struct ErrnoEntry {
  int value;
  const char* name;
};

#define E(x) {x, #x}
const ErrnoEntry kErrnos[] = {
    E(EPERM),        E(ENOENT),       E(ESRCH),         E(EINTR),        E(EIO),
    E(ENXIO),        E(E2BIG),        E(ENOEXEC),       E(EBADF),        E(ECHILD),
    E(EAGAIN),       E(ENOMEM),       E(EACCES),        E(EFAULT),       E(ENOTBLK),
    E(EBUSY),        E(EEXIST),       E(EXDEV),         E(ENODEV),       E(ENOTDIR),
    E(EISDIR),       E(EINVAL),       E(ENFILE),        E(EMFILE),       E(ENOTTY),
    E(ETXTBSY),      E(EFBIG),        E(ENOSPC),        E(ESPIPE),       E(EROFS),
    E(EMLINK),       E(EPIPE),        E(EDOM),          E(ERANGE),       E(EDEADLK),
    E(ENAMETOOLONG), E(ENOLCK),       E(ENOSYS),        E(ENOTEMPTY),    E(ELOOP),
    E(ENOMSG),       E(EIDRM),        E(ENOSTR),        E(ENODATA),      E(ETIME),
    E(ENOSR),        E(ENOLINK),      E(EPROTO),        E(EBADMSG),      E(EOVERFLOW),
    E(EILSEQ),       E(EUSERS),       E(ENOTSOCK),      E(EDESTADDRREQ), E(EMSGSIZE),
    E(EPROTOTYPE),   E(ENOPROTOOPT),  E(EPROTONOSUPPORT), E(ESOCKTNOSUPPORT),
    E(EOPNOTSUPP),   E(EPFNOSUPPORT), E(EAFNOSUPPORT),  E(EADDRINUSE),   E(EADDRNOTAVAIL),
    E(ENETDOWN),     E(ENETUNREACH),  E(ENETRESET),     E(ECONNABORTED), E(ECONNRESET),
    E(ENOBUFS),      E(EISCONN),      E(ENOTCONN),      E(ESHUTDOWN),    E(ETOOMANYREFS),
    E(ETIMEDOUT),    E(ECONNREFUSED), E(EHOSTDOWN),     E(EHOSTUNREACH), E(EALREADY),
    E(EINPROGRESS),  E(ESTALE),       E(EDQUOT),        E(ECANCELED),    E(EOWNERDEAD),
    E(ENOTRECOVERABLE), E(ERFKILL),   E(EHWPOISON),     E(ENOMEDIUM),    E(EMEDIUMTYPE),
    E(EREMOTEIO),    E(ENOKEY),       E(EKEYEXPIRED),   E(EKEYREVOKED),  E(EKEYREJECTED),
};

const char* const kWcStatus[] = {
    "IBV_WC_SUCCESS",         "IBV_WC_LOC_LEN_ERR",       "IBV_WC_LOC_QP_OP_ERR",
    "IBV_WC_LOC_EEC_OP_ERR",  "IBV_WC_LOC_PROT_ERR",      "IBV_WC_WR_FLUSH_ERR",
    "IBV_WC_MW_BIND_ERR",     "IBV_WC_BAD_RESP_ERR",      "IBV_WC_LOC_ACCESS_ERR",
    "IBV_WC_REM_INV_REQ_ERR", "IBV_WC_REM_ACCESS_ERR",    "IBV_WC_REM_OP_ERR",
    "IBV_WC_RETRY_EXC_ERR",   "IBV_WC_RNR_RETRY_EXC_ERR", "IBV_WC_LOC_RDD_VIOL_ERR",
    "IBV_WC_REM_INV_RD_REQ_ERR", "IBV_WC_REM_ABORT_ERR",  "IBV_WC_INV_EECN_ERR",
    "IBV_WC_INV_EEC_STATE_ERR", "IBV_WC_FATAL_ERR",       "IBV_WC_RESP_TIMEOUT_ERR",
    "IBV_WC_GENERAL_ERR",     "IBV_WC_TM_ERR",            "IBV_WC_TM_RNDV_INCOMPLETE",
};
static_assert(IBV_WC_REM_ACCESS_ERR == 10, "ibv_wc_status layout");
static_assert(IBV_WC_TM_RNDV_INCOMPLETE == 23, "ibv_wc_status layout");

}  // namespace

const char* ErrnoName(int err) {
  for (const auto& e : kErrnos)
    if (e.value == err) return e.name;
  return "EUNKNOWN";
}

const char* WcStatusName(int status) {
  if (status >= 0 && status < static_cast<int>(sizeof(kWcStatus) / sizeof(kWcStatus[0])))
    return kWcStatus[status];
  return "IBV_WC_UNKNOWN";
}

Failure Failure::Errno(int err, const char* syscall, const std::string& what) {
  Failure f;
  f.code = ErrnoName(err);
  f.errnum = err;
  f.syscall = syscall ? syscall : "";
  std::string msg = std::strerror(err);
  f.message = std::string(syscall ? syscall : "") + (syscall ? ": " : "") + msg;
  if (!what.empty()) f.message += " (" + what + ")";
  return f;
}

Failure Failure::Npmu(const char* code, const std::string& message, int err, const char* syscall) {
  Failure f;
  f.code = code;
  f.errnum = err;
  f.syscall = syscall ? syscall : "";
  f.message = message;
  return f;
}

static Napi::Error Decorate(Napi::Env env, Napi::Error e, const Failure& f) {
  if (f.privateData) {
    const auto& d = *f.privateData;
    e.Set("privateData", d.empty() ? Napi::Buffer<uint8_t>::New(env, 0)
                                   : Napi::Buffer<uint8_t>::Copy(env, d.data(), d.size()));
  }
  return e;
}

Napi::Error MakeError(Napi::Env env, const Failure& f) {
  AddonData* data = GetData(env);
  Napi::Value errnoValue = f.errnum ? Napi::Value(Napi::Number::New(env, f.errnum)) : env.Undefined();
  Napi::Value syscallValue =
      f.syscall.empty() ? env.Undefined() : Napi::Value(Napi::String::New(env, f.syscall));
  if (data && !data->errorClass.IsEmpty()) {
    try {
      Napi::Value v = data->errorClass.New({Napi::String::New(env, f.message),
                                            Napi::String::New(env, f.code), errnoValue, syscallValue});
      if (v.IsObject()) return Decorate(env, Napi::Error(env, v), f);
    } catch (const Napi::Error&) {
      // a broken error class must not hide the failure: fall through
    }
  }
  Napi::Error e = Napi::Error::New(env, f.message);
  e.Set("code", Napi::String::New(env, f.code));
  if (f.errnum) e.Set("errno", errnoValue);
  if (!f.syscall.empty()) e.Set("syscall", syscallValue);
  return Decorate(env, e, f);
}

void Throw(Napi::Env env, const Failure& f) { throw MakeError(env, f); }

void ThrowErrno(Napi::Env env, int err, const char* syscall, const std::string& what) {
  Throw(env, Failure::Errno(err, syscall, what));
}

void ThrowNpmu(Napi::Env env, const char* code, const std::string& message) {
  Throw(env, Failure::Npmu(code, message));
}

std::string DescribeValue(Napi::Value v) {
  switch (v.Type()) {
    case napi_undefined:
      return "undefined";
    case napi_null:
      return "null";
    case napi_boolean:
      return std::string("type boolean (") + (v.As<Napi::Boolean>().Value() ? "true" : "false") + ")";
    case napi_number: {
      double d = v.As<Napi::Number>().DoubleValue();
      std::string s;
      if (std::isnan(d)) s = "NaN";
      else if (std::isinf(d)) s = d > 0 ? "Infinity" : "-Infinity";
      else {
        char buf[64];
        snprintf(buf, sizeof buf, "%.17g", d);
        s = buf;
      }
      return "type number (" + s + ")";
    }
    case napi_bigint: {
      bool lossless;
      int64_t i = v.As<Napi::BigInt>().Int64Value(&lossless);
      return "type bigint (" + (lossless ? std::to_string(i) : std::string("...")) + "n)";
    }
    case napi_string: {
      std::string s = v.As<Napi::String>().Utf8Value();
      if (s.size() > 28) s = s.substr(0, 25) + "...";
      return "type string ('" + s + "')";
    }
    case napi_symbol:
      return "type symbol";
    case napi_function:
      return "function";
    case napi_external:
      return "type external";
    case napi_object: {
      if (v.IsArray()) return "an instance of Array";
      try {
        Napi::Value ctor = v.As<Napi::Object>().Get("constructor");
        if (ctor.IsFunction()) {
          Napi::Value name = ctor.As<Napi::Object>().Get("name");
          if (name.IsString() && !name.As<Napi::String>().Utf8Value().empty())
            return "an instance of " + name.As<Napi::String>().Utf8Value();
        }
      } catch (const Napi::Error&) {
      }
      return "an object";
    }
    default:
      return "a value";
  }
}

namespace {
[[noreturn]] void ThrowCoded(Napi::Error e, const char* code) {
  e.Set("code", Napi::String::New(e.Env(), code));
  throw e;
}
}  // namespace

void ThrowArgType(Napi::Env env, const std::string& name, const std::string& expected,
                  Napi::Value received) {
  ThrowCoded(Napi::TypeError::New(env, "The \"" + name + "\" argument must be " + expected +
                                           ". Received " + DescribeValue(received)),
             "ERR_INVALID_ARG_TYPE");
}

void ThrowArgValue(Napi::Env env, const std::string& name, const std::string& reason,
                   Napi::Value received) {
  ThrowCoded(Napi::TypeError::New(env, "The argument '" + name + "' " + reason + ". Received " +
                                           DescribeValue(received)),
             "ERR_INVALID_ARG_VALUE");
}

void ThrowOutOfRange(Napi::Env env, const std::string& name, const std::string& range,
                     Napi::Value received) {
  ThrowCoded(Napi::RangeError::New(env, "The value of \"" + name + "\" is out of range. It must be " +
                                            range + ". Received " + DescribeValue(received)),
             "ERR_OUT_OF_RANGE");
}

}  // namespace npmu
