// A listening rdma_cm id on its own event channel (on a uv_poll handle).
#pragma once

#include <napi.h>

#include "util/args.h"
#include <rdma/rdma_cma.h>

#include <map>
#include <memory>
#include <string>

#include "connection_request.h"
#include "util/errors.h"
#include "util/uv_handle.h"

namespace npmu {

class Listener;

class ListenerRes : public std::enable_shared_from_this<ListenerRes> {
 public:
  static std::shared_ptr<ListenerRes> Create(std::shared_ptr<Registry> reg, const std::string& host, int port,
                                             int backlog, Failure* failure);
  ~ListenerRes();
  // Rejects undecided requests, destroys the id and the channel.
  void Close();

  std::shared_ptr<Registry> reg;
  std::string host;
  int port = 0;
  bool closed = false;
  std::map<rdma_cm_id*, std::shared_ptr<RequestRes>> pending;
  Napi::FunctionReference onRequest;
  Listener* wrapper = nullptr;

 private:
  ListenerRes() = default;
  void OnCmReadable();
  void OnRequest(Napi::Env env, struct CmEvent& e);
  void Destroy();

  rdma_event_channel* ch_ = nullptr;
  rdma_cm_id* id_ = nullptr;
  UvHandle* poll_ = nullptr;
  int dispatchDepth_ = 0;
  bool destroyPending_ = false;
  bool destroyed_ = false;
};

class Listener : public Napi::ObjectWrap<Listener> {
 public:
  static Napi::Function Define(Napi::Env env);
  explicit Listener(const Napi::CallbackInfo& info);
  static Listener* Unwrap(Napi::Object o) { return UnwrapThis<Listener>(o, kListenerTag, "Listener"); }
  ~Listener() override;
  void DropSelfRef();

 private:
  Napi::Value Port(const Napi::CallbackInfo& info);
  Napi::Value Host(const Napi::CallbackInfo& info);
  Napi::Value GetOnRequest(const Napi::CallbackInfo& info);
  void SetOnRequest(const Napi::CallbackInfo& info, const Napi::Value& v);
  Napi::Value Close(const Napi::CallbackInfo& info);

  std::shared_ptr<ListenerRes> res_;
  bool selfRef_ = false;
};

Napi::Value Listen(const Napi::CallbackInfo& info);

}  // namespace npmu
