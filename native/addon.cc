// Module initialisation: a context-aware addon (per-environment instance
// data, no static mutable state) and the per-environment reaper.
#include <napi.h>

#include "addon_data.h"
#include "connection_request.h"
#include "context.h"
#include "endpoint.h"
#include "fanout.h"
#include "listener.h"
#include "mapping.h"
#include "mr.h"
#include "pd.h"
#include "util/args.h"
#include "util/errors.h"

namespace npmu {

// Random 128-bit tags, one per wrapped class.
const napi_type_tag kContextTag = {0x8f4c2a61d3b7e905ULL, 0x1a6e3c9b0f2d4871ULL};
const napi_type_tag kPdTag = {0x8f4c2a61d3b7e905ULL, 0x1a6e3c9b0f2d4872ULL};
const napi_type_tag kMappingTag = {0x8f4c2a61d3b7e905ULL, 0x1a6e3c9b0f2d4873ULL};
const napi_type_tag kMrTag = {0x8f4c2a61d3b7e905ULL, 0x1a6e3c9b0f2d4874ULL};
const napi_type_tag kEndpointTag = {0x8f4c2a61d3b7e905ULL, 0x1a6e3c9b0f2d4875ULL};
const napi_type_tag kListenerTag = {0x8f4c2a61d3b7e905ULL, 0x1a6e3c9b0f2d4876ULL};
const napi_type_tag kRequestTag = {0x8f4c2a61d3b7e905ULL, 0x1a6e3c9b0f2d4877ULL};
const napi_type_tag kFanoutTag = {0x8f4c2a61d3b7e905ULL, 0x1a6e3c9b0f2d4879ULL};
const napi_type_tag kTokenTag = {0x8f4c2a61d3b7e905ULL, 0x1a6e3c9b0f2d4878ULL};

void Registry::HandleClosed() {
  openHandles--;
  if (reaping && openHandles == 0 && hook) {
    napi_async_cleanup_hook_handle h = hook;
    hook = nullptr;
    napi_remove_async_cleanup_hook(h);
  }
}

// Dependency order: endpoints and listeners (QPs, cm ids, channels, uv
// handles), then MRs, mappings, PDs, contexts. No JS is called.
void Registry::Reap() {
  reaping = true;
  if (turnCheckOpen) {
    turnCheckOpen = false;
    uv_check_stop(&turnCheck);
    uv_close(reinterpret_cast<uv_handle_t*>(&turnCheck),
             [](uv_handle_t* h) { static_cast<Registry*>(h->data)->HandleClosed(); });
  }
  std::vector<EndpointRes*> eps(endpoints.begin(), endpoints.end());
  for (EndpointRes* e : eps) {
    auto keep = e->shared_from_this();
    e->DestroyNow();
  }
  std::vector<ListenerRes*> ls(listeners.begin(), listeners.end());
  for (ListenerRes* l : ls) {
    auto keep = l->shared_from_this();
    l->Close();
  }
  std::vector<MrRes*> ms(mrs.begin(), mrs.end());
  for (MrRes* m : ms) m->Close();
  std::vector<MappingRes*> maps(mappings.begin(), mappings.end());
  for (MappingRes* m : maps) m->Close();
  std::vector<PdRes*> ps(pds.begin(), pds.end());
  for (PdRes* p : ps) p->Close();
  std::vector<ContextRes*> cs(contexts.begin(), contexts.end());
  for (ContextRes* c : cs) c->Close();
  alive = false;
}

namespace {

void ReapHook(napi_async_cleanup_hook_handle handle, void* arg) {
  auto* reg = static_cast<std::shared_ptr<Registry>*>(arg);
  std::shared_ptr<Registry> r = *reg;
  delete reg;
  r->hook = handle;
  r->Reap();
  // Handles closed by the reap finish on a later loop turn; the hook is
  // removed (teardown may go on) when the last one has.
  if (r->openHandles == 0 && r->hook) {
    r->hook = nullptr;
    napi_remove_async_cleanup_hook(handle);
  }
}

Napi::Value Init(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsFunction()) ThrowArgType(env, "errorClass", "of type function", info[0]);
  GetData(env)->errorClass = Napi::Persistent(info[0].As<Napi::Function>());
  if (info[1].IsFunction()) GetData(env)->markUntransferable = Napi::Persistent(info[1].As<Napi::Function>());
  return env.Undefined();
}

// loopTurn(): the number of event-loop turns so far (see Registry::turns).
Napi::Value LoopTurn(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), GetData(info.Env())->reg->turns);
}

Napi::Value LiveObjects(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Registry& r = *GetData(env)->reg;
  Napi::Object o = Napi::Object::New(env);
  o.Set("contexts", Napi::Number::New(env, static_cast<double>(r.contexts.size())));
  o.Set("pds", Napi::Number::New(env, static_cast<double>(r.pds.size())));
  o.Set("mappings", Napi::Number::New(env, static_cast<double>(r.mappings.size())));
  o.Set("mrs", Napi::Number::New(env, static_cast<double>(r.mrs.size())));
  o.Set("endpoints", Napi::Number::New(env, static_cast<double>(r.endpoints.size())));
  o.Set("listeners", Napi::Number::New(env, static_cast<double>(r.listeners.size())));
  return o;
}

void FreeAddonData(Napi::Env env, AddonData* data) {
  if (data->asyncContext) napi_async_destroy(env, data->asyncContext);
  data->reg->alive = false;
  data->reg->data = nullptr;
  delete data;
}

}  // namespace

void MarkUntransferable(Napi::Env env, Napi::Value ab) {
  AddonData* d = GetData(env);
  if (!d || d->markUntransferable.IsEmpty()) return;
  d->markUntransferable.Call({ab});
}

Napi::Value OnEventKey(Napi::Env env) { return GetData(env)->keys.Value().Get("onEvent"); }

Napi::Object InitModule(Napi::Env env, Napi::Object exports) {
  auto* data = new AddonData();
  data->reg = std::make_shared<Registry>();
  data->reg->env = env;
  data->reg->data = data;
  napi_get_uv_event_loop(env, &data->reg->loop);
  {
    Registry* r = data->reg.get();
    if (uv_check_init(r->loop, &r->turnCheck) == 0) {
      r->turnCheck.data = r;
      r->turnCheckOpen = true;
      r->openHandles++;
      uv_check_start(&r->turnCheck, [](uv_check_t* h) { static_cast<Registry*>(h->data)->turns += 1; });
      uv_unref(reinterpret_cast<uv_handle_t*>(&r->turnCheck));
    }
  }
  env.SetInstanceData<AddonData, FreeAddonData>(data);

  napi_value name;
  napi_create_string_utf8(env, "npmu:native", NAPI_AUTO_LENGTH, &name);
  napi_async_init(env, nullptr, name, &data->asyncContext);
  auto* hookArg = new std::shared_ptr<Registry>(data->reg);
  if (napi_add_async_cleanup_hook(env, ReapHook, hookArg, nullptr) != napi_ok) delete hookArg;

  Napi::Function ctx = Context::Define(env);
  Napi::Function pd = ProtectionDomain::Define(env);
  Napi::Function mapping = Mapping::Define(env);
  Napi::Function mr = MemoryRegion::Define(env);
  Napi::Function ep = Endpoint::Define(env);
  Napi::Function listener = Listener::Define(env);
  Napi::Function request = ConnectionRequest::Define(env);
  data->contextCtor = Napi::Persistent(ctx);
  data->pdCtor = Napi::Persistent(pd);
  data->mappingCtor = Napi::Persistent(mapping);
  data->mrCtor = Napi::Persistent(mr);
  data->endpointCtor = Napi::Persistent(ep);
  data->listenerCtor = Napi::Persistent(listener);
  data->requestCtor = Napi::Persistent(request);
  Napi::Object keys = Napi::Object::New(env);
  keys.Set("onEvent", Napi::Symbol::New(env, "npmu.onEvent"));
  data->keys = Napi::Persistent(keys);

  exports.Set("init", Napi::Function::New<Init>(env, "init"));
  exports.Set("listDevices", Napi::Function::New<ListDevices>(env, "listDevices"));
  exports.Set("openContext", Napi::Function::New<OpenContext>(env, "openContext"));
  exports.Set("ProtectionDomain", pd);
  exports.Set("mapFile", Napi::Function::New<MapFile>(env, "mapFile"));
  exports.Set("mapExtents", Napi::Function::New<MapExtents>(env, "mapExtents"));
  exports.Set("MemoryRegion", mr);
  exports.Set("connect", Napi::Function::New<Connect>(env, "connect"));
  exports.Set("listen", Napi::Function::New<Listen>(env, "listen"));
  exports.Set("postAll", Napi::Function::New<PostAll>(env, "postAll"));
  exports.Set("Fanout", Fanout::Define(env));
  exports.Set("loopTurn", Napi::Function::New<LoopTurn>(env, "loopTurn"));
  exports.Set("liveObjects", Napi::Function::New<LiveObjects>(env, "liveObjects"));
  return exports;
}

}  // namespace npmu

static Napi::Object InitAddon(Napi::Env env, Napi::Object exports) { return npmu::InitModule(env, exports); }

NODE_API_MODULE(npmu_native, InitAddon)
