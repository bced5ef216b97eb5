// An incoming connection request on a Listener, to accept or reject.
#pragma once

#include <napi.h>

#include "util/args.h"
#include <rdma/rdma_cma.h>

#include <memory>
#include <string>
#include <vector>

#include "util/uv_handle.h"

namespace npmu {

class ListenerRes;

struct RequestRes : std::enable_shared_from_this<RequestRes> {
  enum class State { Pending, Accepted, Rejected, Gone };
  std::shared_ptr<Registry> reg;
  std::weak_ptr<ListenerRes> listener;
  rdma_cm_id* id = nullptr;  // on the listener's channel until accepted
  UvHandle* timer = nullptr;
  State state = State::Pending;
  std::vector<uint8_t> privateData;
  std::string remoteAddress;
  int remotePort = 0;
  uint8_t initiatorDepth = 0, responderResources = 0;

  // rdma_reject (if still pending), destroy the id, forget it.
  void Reject(const std::vector<uint8_t>& data);
  // The connector went away before a decision.
  void Gone();
  // Hand the id over (accept): stop the timer and leave the listener.
  rdma_cm_id* Take();
  ~RequestRes();

 private:
  void Detach();
};

class ConnectionRequest : public Napi::ObjectWrap<ConnectionRequest> {
 public:
  static Napi::Function Define(Napi::Env env);
  static Napi::Object Wrap(Napi::Env env, std::shared_ptr<RequestRes> res);
  explicit ConnectionRequest(const Napi::CallbackInfo& info);
  static ConnectionRequest* Unwrap(Napi::Object o) { return UnwrapThis<ConnectionRequest>(o, kRequestTag, "ConnectionRequest"); }

 private:
  Napi::Value RemoteAddress(const Napi::CallbackInfo& info);
  Napi::Value RemotePort(const Napi::CallbackInfo& info);
  Napi::Value PrivateData(const Napi::CallbackInfo& info);
  Napi::Value Accept(const Napi::CallbackInfo& info);
  Napi::Value Reject(const Napi::CallbackInfo& info);

  std::shared_ptr<RequestRes> res_;
};

}  // namespace npmu
