#include "context.h"

#include <endian.h>
#include <rdma/rdma_cma.h>

#include <cerrno>
#include <cstdio>

#include "util/args.h"

namespace npmu {

std::shared_ptr<ContextRes> ContextRes::Open(std::shared_ptr<Registry> reg, const std::string& name,
                                             Failure* failure) {
  int n = 0;
  errno = 0;
  ibv_context** list = rdma_get_devices(&n);
  if (!list || n <= 0) {
    if (list) rdma_free_devices(list);
    *failure = Failure::Npmu("ERR_NPMU_NO_DEVICE", "no RDMA device named '" + name + "' (none found)",
                             ENODEV, "rdma_get_devices");
    return nullptr;
  }
  for (int i = 0; i < n; i++) {
    if (list[i] && name == ibv_get_device_name(list[i]->device)) {
      auto res = std::make_shared<ContextRes>();
      res->reg = reg;
      res->list = list;
      res->ctx = list[i];
      res->name = name;
      reg->contexts.insert(res.get());
      return res;
    }
  }
  rdma_free_devices(list);
  *failure = Failure::Npmu("ERR_NPMU_NO_DEVICE", "no RDMA device named '" + name + "'", ENODEV,
                           "rdma_get_devices");
  return nullptr;
}

std::shared_ptr<ContextRes> ContextRes::ForVerbs(std::shared_ptr<Registry> reg, ibv_context* verbs,
                                                 Failure* failure) {
  return Open(std::move(reg), ibv_get_device_name(verbs->device), failure);
}

void ContextRes::Close() {
  if (closed) return;
  closed = true;
  if (list) rdma_free_devices(list);
  list = nullptr;
  ctx = nullptr;
  reg->contexts.erase(this);
}

ContextRes::~ContextRes() { Close(); }

// ---- construction token -------------------------------------------------

Napi::External<void> MakeToken(Napi::Env env, void* payload) {
  Napi::External<void> ext = Napi::External<void>::New(env, payload);
  ext.TypeTag(&kTokenTag);
  return ext;
}

void* TakeToken(const Napi::CallbackInfo& info, const char* className) {
  if (info.Length() >= 1 && info[0].IsExternal()) {
    Napi::External<void> ext = info[0].As<Napi::External<void>>();
    if (ext.CheckTypeTag(&kTokenTag)) return ext.Data();
  }
  Napi::TypeError e = Napi::TypeError::New(info.Env(), std::string("Illegal constructor: ") + className +
                                                           " objects are created by the addon");
  e.Set("code", Napi::String::New(info.Env(), "ERR_ILLEGAL_CONSTRUCTOR"));
  throw e;
}

// ---- Context ------------------------------------------------------------

Napi::Function Context::Define(Napi::Env env) {
  return DefineClass(env, "Context",
                     {
                         InstanceAccessor<&Context::Name>("name"),
                         InstanceAccessor<&Context::Closed>("closed"),
                         InstanceMethod<&Context::QueryDevice>("queryDevice"),
                         InstanceMethod<&Context::QueryPort>("queryPort"),
                         InstanceMethod<&Context::QueryGid>("queryGid"),
                         InstanceMethod<&Context::Close>("close"),
                     });
}

Napi::Object Context::Wrap(Napi::Env env, std::shared_ptr<ContextRes> res) {
  auto* holder = new std::shared_ptr<ContextRes>(std::move(res));
  try {
    Napi::Object o = GetData(env)->contextCtor.New({MakeToken(env, holder)});
    delete holder;
    return o;
  } catch (...) {
    delete holder;
    throw;
  }
}

Context::Context(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Context>(info) {
  auto* holder = static_cast<std::shared_ptr<ContextRes>*>(TakeToken(info, "Context"));
  res_ = *holder;
  info.This().As<Napi::Object>().TypeTag(&kContextTag);
}

ibv_context* Context::Live(Napi::Env env) {
  if (res_->closed) ThrowNpmu(env, "ERR_NPMU_CLOSED", "context is closed");
  return res_->ctx;
}

Napi::Value Context::Name(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), res_->name);
}

Napi::Value Context::Closed(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), res_->closed);
}

Napi::Value Context::QueryDevice(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ibv_context* ctx = Live(env);
  ibv_device_attr a{};
  int rc = ibv_query_device(ctx, &a);
  if (rc) ThrowErrno(env, rc, "ibv_query_device");
  Napi::Object o = Napi::Object::New(env);
  o.Set("fwVer", Napi::String::New(env, a.fw_ver));
  o.Set("vendorId", Napi::Number::New(env, a.vendor_id));
  o.Set("vendorPartId", Napi::Number::New(env, a.vendor_part_id));
  o.Set("maxQp", Napi::Number::New(env, a.max_qp));
  o.Set("maxQpWr", Napi::Number::New(env, a.max_qp_wr));
  o.Set("maxSge", Napi::Number::New(env, a.max_sge));
  o.Set("maxCq", Napi::Number::New(env, a.max_cq));
  o.Set("maxCqe", Napi::Number::New(env, a.max_cqe));
  o.Set("maxMr", Napi::Number::New(env, a.max_mr));
  o.Set("maxMrSize", Napi::BigInt::New(env, static_cast<uint64_t>(a.max_mr_size)));
  o.Set("maxPd", Napi::Number::New(env, a.max_pd));
  o.Set("maxQpRdAtom", Napi::Number::New(env, a.max_qp_rd_atom));
  const char* cap = a.atomic_cap == IBV_ATOMIC_HCA ? "hca" : a.atomic_cap == IBV_ATOMIC_GLOB ? "glob" : "none";
  o.Set("atomicCap", Napi::String::New(env, cap));
  o.Set("physPortCnt", Napi::Number::New(env, a.phys_port_cnt));
  return o;
}

Napi::Value Context::QueryPort(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int port = static_cast<int>(ToInteger(env, info[0], "port", 1, 255));
  ibv_context* ctx = Live(env);
  ibv_port_attr a{};
  int rc = ibv_query_port(ctx, static_cast<uint8_t>(port), &a);
  if (rc) ThrowErrno(env, rc, "ibv_query_port", "port " + std::to_string(port));
  // ibv_devinfo's names (ibv_port_state_str() says "active", not "PORT_ACTIVE")
  static const char* const kStates[] = {"PORT_NOP", "PORT_DOWN", "PORT_INIT", "PORT_ARMED", "PORT_ACTIVE",
                                        "PORT_ACTIVE_DEFER"};
  const char* stateName = a.state <= IBV_PORT_ACTIVE_DEFER ? kStates[a.state] : "PORT_UNKNOWN";
  auto mtu = [](int m) { return m >= IBV_MTU_256 && m <= IBV_MTU_4096 ? 128 << m : 0; };
  Napi::Object o = Napi::Object::New(env);
  o.Set("state", Napi::Number::New(env, a.state));
  o.Set("stateName", Napi::String::New(env, stateName));
  o.Set("activeMtu", Napi::Number::New(env, mtu(a.active_mtu)));
  o.Set("maxMtu", Napi::Number::New(env, mtu(a.max_mtu)));
  o.Set("gidTblLen", Napi::Number::New(env, a.gid_tbl_len));
  const char* ll = a.link_layer == IBV_LINK_LAYER_ETHERNET ? "Ethernet"
                   : (a.link_layer == IBV_LINK_LAYER_INFINIBAND || a.link_layer == IBV_LINK_LAYER_UNSPECIFIED)
                       ? "InfiniBand"
                       : "unknown";
  o.Set("linkLayer", Napi::String::New(env, ll));
  o.Set("lid", Napi::Number::New(env, a.lid));
  return o;
}

Napi::Value Context::QueryGid(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int port = static_cast<int>(ToInteger(env, info[0], "port", 1, 255));
  int index = static_cast<int>(ToInteger(env, info[1], "index", 0, 65535));
  ibv_context* ctx = Live(env);
  ibv_gid gid{};
  errno = 0;
  int rc = ibv_query_gid(ctx, static_cast<uint8_t>(port), index, &gid);
  if (rc) ThrowErrno(env, errno ? errno : EINVAL, "ibv_query_gid", "port " + std::to_string(port) + " index " + std::to_string(index));
  char buf[40];
  const uint8_t* r = gid.raw;
  snprintf(buf, sizeof buf, "%02x%02x:%02x%02x:%02x%02x:%02x%02x:%02x%02x:%02x%02x:%02x%02x:%02x%02x", r[0],
           r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11], r[12], r[13], r[14], r[15]);
  return Napi::String::New(env, buf);
}

Napi::Value Context::Close(const Napi::CallbackInfo& info) {
  if (res_->closed) return info.Env().Undefined();
  if (res_->children > 0)
    ThrowNpmu(info.Env(), "ERR_NPMU_BUSY",
              "context has " + std::to_string(res_->children) + " open protection domain(s)");
  res_->Close();
  return info.Env().Undefined();
}

// ---- module functions ---------------------------------------------------

Napi::Value ListDevices(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Array out = Napi::Array::New(env);
  int n = 0;
  ibv_device** list = ibv_get_device_list(&n);
  if (!list) return out;
  for (int i = 0; i < n; i++) {
    Napi::Object d = Napi::Object::New(env);
    d.Set("name", Napi::String::New(env, ibv_get_device_name(list[i])));
    char guid[17];
    snprintf(guid, sizeof guid, "%016llx",
             static_cast<unsigned long long>(be64toh(ibv_get_device_guid(list[i]))));
    d.Set("guid", Napi::String::New(env, guid));
    d.Set("nodeType", Napi::String::New(env, ibv_node_type_str(list[i]->node_type)));
    out.Set(static_cast<uint32_t>(i), d);
  }
  ibv_free_device_list(list);
  return out;
}

Napi::Value OpenContext(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string name = ToStringArg(env, info[0], "name");
  Failure f;
  auto res = ContextRes::Open(GetData(env)->reg, name, &f);
  if (!res) Throw(env, f);
  return Context::Wrap(env, res);
}

}  // namespace npmu
