// Per-environment state: the instance data of this context-aware addon.
//
// AddonData holds the JS-side things (error class, constructors, async
// context) and is owned by the environment. Registry is the native side: the
// set of live native resources, shared (std::shared_ptr) by every resource so
// it outlives whichever of them goes last, even after the environment is gone.
#pragma once

#include <napi.h>
#include <uv.h>

#include <memory>
#include <unordered_set>

namespace npmu {

struct ContextRes;
struct PdRes;
struct MappingRes;
struct MrRes;
class EndpointRes;
class ListenerRes;
struct AddonData;

struct Registry {
  napi_env env = nullptr;
  uv_loop_t* loop = nullptr;
  AddonData* data = nullptr;  // valid while alive
  bool alive = true;          // false once environment teardown began
  bool reaping = false;
  napi_async_cleanup_hook_handle hook = nullptr;
  int openHandles = 0;  // uv handles not yet close-called back
  // Event-loop turns: a uv_check handle (unref'd) counts them, so JS can tell
  // whether the loop turned since it last looked (loopTurn(); lib/client.ts
  // uses it to yield a chain of operations that settle inside their post).
  uv_check_t turnCheck{};
  bool turnCheckOpen = false;
  double turns = 0;

  std::unordered_set<ContextRes*> contexts;
  std::unordered_set<PdRes*> pds;
  std::unordered_set<MappingRes*> mappings;
  std::unordered_set<MrRes*> mrs;
  std::unordered_set<EndpointRes*> endpoints;
  std::unordered_set<ListenerRes*> listeners;

  // Called when a uv handle finished closing.
  void HandleClosed();
  // Destroy every live resource without calling into JS (env teardown).
  void Reap();
};

struct AddonData {
  std::shared_ptr<Registry> reg;
  Napi::FunctionReference errorClass;
  Napi::FunctionReference contextCtor;
  Napi::FunctionReference pdCtor;
  Napi::FunctionReference mappingCtor;
  Napi::FunctionReference mrCtor;
  Napi::FunctionReference endpointCtor;
  Napi::FunctionReference listenerCtor;
  Napi::FunctionReference requestCtor;
  napi_async_context asyncContext = nullptr;
  // {onEvent: Symbol}: private property keys on wrapper objects.
  Napi::ObjectReference keys;
  // init()'s hook (worker_threads.markAsUntransferable): buffers over registered
  // or mapped memory must not be transferred (moved) away.
  Napi::FunctionReference markUntransferable;
};

// Marks an ArrayBuffer untransferable through init()'s hook, if one was given.
void MarkUntransferable(Napi::Env env, Napi::Value ab);
// The private key under which an Endpoint keeps its onEvent function.
Napi::Value OnEventKey(Napi::Env env);

inline AddonData* GetData(Napi::Env env) { return env.GetInstanceData<AddonData>(); }

// Type tags: a wrapped object is recognised by its tag, never by prototype.
extern const napi_type_tag kContextTag;
extern const napi_type_tag kPdTag;
extern const napi_type_tag kMappingTag;
extern const napi_type_tag kMrTag;
extern const napi_type_tag kEndpointTag;
extern const napi_type_tag kListenerTag;
extern const napi_type_tag kRequestTag;
extern const napi_type_tag kFanoutTag;
extern const napi_type_tag kTokenTag;  // internal construction token

// Runs f(env) as a top-level callback from libuv: handle scope + callback
// scope (so promise continuations and nextTicks run afterwards); a JS
// exception becomes an uncaught exception. Does nothing after teardown began.
template <typename F>
void RunCallback(Registry* reg, F&& f) {
  if (!reg->alive) return;
  Napi::Env env(reg->env);
  Napi::HandleScope hs(env);
  napi_callback_scope scope = nullptr;
  bool haveScope = reg->data && reg->data->asyncContext &&
                   napi_open_callback_scope(env, nullptr, reg->data->asyncContext, &scope) == napi_ok;
  try {
    f(env);
  } catch (const Napi::Error& e) {
    napi_fatal_exception(env, e.Value());
  }
  if (haveScope) napi_close_callback_scope(env, scope);
}

}  // namespace npmu
