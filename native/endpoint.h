// A connected RC queue pair made through librdmacm, with its own rdma_cm event
// channel and completion channel, each on a uv_poll handle.
#pragma once

#include <infiniband/verbs.h>
#include <napi.h>

#include "util/args.h"
#include <rdma/rdma_cma.h>

#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <unordered_set>
#include <vector>

#include "pd.h"
#include "util/uv_handle.h"
#include "work_request.h"

namespace npmu {

class Endpoint;

struct EndpointOptions {
  std::shared_ptr<PdRes> pd;
  Napi::Object pdObj;  // the JS object of `pd`, if given
  uint32_t sqDepth = 128;
  uint32_t rqDepth = 128;
  uint32_t maxInline = 64;
  bool busyPoll = false;
  uint32_t spinUs = 0;  // event mode: hybrid polling budget after a post (0: one poll)
  int responderResources = -1;  // -1: min(device max, 16)
};

// Parses EndpointOptions fields from opts (argument errors throw).
EndpointOptions ParseEndpointOptions(Napi::Env env, Napi::Object opts, const std::string& prefix);

// A copy of what we need from an rdma_cm_event (acked right after copying).
struct CmEvent {
  rdma_cm_event_type type;
  int status;
  rdma_cm_id* id;
  rdma_cm_id* listenId;
  std::vector<uint8_t> privateData;
  uint8_t initiatorDepth = 0;
  uint8_t responderResources = 0;
  static bool Next(rdma_event_channel* ch, CmEvent* out);
};

std::string AddrString(const sockaddr* sa);

class EndpointRes : public std::enable_shared_from_this<EndpointRes> {
 public:
  enum class State { Connecting, Accepting, Connected, Error, Disconnected, Closing, Closed };

  // Creates the endpoint's event channel (nullptr + failure if it cannot).
  static std::shared_ptr<EndpointRes> Create(std::shared_ptr<Registry> reg, EndpointOptions opts,
                                             Failure* failure);
  ~EndpointRes();

  // Active side: resolve, route, QP, connect. Settles `deferred`.
  Napi::Promise StartConnect(Napi::Env env, const sockaddr* dst, uint32_t timeoutMs,
                             std::vector<uint8_t> privateData);
  // Passive side: take over a request's id, build the QP, rdma_accept.
  Napi::Promise StartAccept(Napi::Env env, rdma_cm_id* id, uint8_t peerInitiatorDepth,
                            uint8_t peerResponderResources, std::vector<uint8_t> privateData,
                            std::vector<uint8_t> peerPrivateData);

  // Posts specs as one send chain and one recv chain; results go to
  // batch[slots[i]]. Busy-poll mode spins until they are done (<= 1 s).
  // Returns the count of this post's records still out.
  std::shared_ptr<size_t> Post(Napi::Env env, std::vector<WrSpec>& specs, const std::vector<size_t>& slots,
                               const std::shared_ptr<Batch>& batch, bool spin);
  // The lean path (Fanout): records the caller filled (op, mr or inline
  // bytes, sge, swr opcode/flags/remote, batch, slot) go on the send queue as
  // one chain; the caller then calls Reap. Takes ownership of the records.
  std::shared_ptr<size_t> PostRecords(Napi::Env env, WrRecord* const* recs, size_t n);
  // Polls until `pending` is zero, or for about limitNs (the clock read every
  // clockEvery empty polls): busy-poll mode and hybrid polling (spinUs).
  void SpinFor(Napi::Env env, const std::shared_ptr<size_t>& pending, uint64_t limitNs, unsigned clockEvery);
  // After a post: busy-poll mode spins (SpinFor, <= 1 s); event mode polls the
  // CQ once without waiting, or for up to spinUs (hybrid polling). Either way,
  // if work is still out, the CQ is armed.
  void Reap(Napi::Env env, const std::shared_ptr<size_t>& pending);

  void Disconnect();
  Napi::Value Close(Napi::Env env);
  // Environment teardown or finalizer: destroy now, no JS.
  void DestroyNow();

  const char* StateName() const;
  State state() const { return state_; }
  bool connected() const { return state_ == State::Connected; }
  size_t inflight() const { return outstanding_.size(); }
  size_t queued() const { return sendQueue_.size() + recvQueue_.size(); }
  uint32_t maxSend() const { return maxSend_; }
  uint32_t maxRecv() const { return maxRecv_; }
  uint32_t cqe() const { return cqe_; }
  uint32_t maxInline() const { return maxInline_; }
  bool busyPoll = false;
  uint32_t spinUs = 0;
  std::shared_ptr<PdRes> pd() const { return pd_; }
  std::string localAddress, remoteAddress;
  int remotePort = 0;
  std::vector<uint8_t> peerPrivateData;
  // onEvent lives on the JS object (see SetOnEvent): no strong native reference.
  Napi::ObjectReference pdObj;  // handed to the wrapper
  Endpoint* wrapper = nullptr;
  std::shared_ptr<Registry> reg;

 private:
  EndpointRes() = default;
  void OnCmReadable();
  void OnCqReadable();
  void HandleCm(Napi::Env env, const CmEvent& e);
  void HandleWc(Napi::Env env, const ibv_wc& wc);
  void DrainCq(Napi::Env env);
  void EnsureArmed(Napi::Env env);
  void EmitLater(const Failure& f);
  bool CreateQueues(Failure* f);
  void AcceptSteps(Napi::Env env, rdma_cm_id* id, uint8_t peerInitiatorDepth, uint8_t peerResponderResources,
                   std::vector<uint8_t> privateData);
  void Established(Napi::Env env, const CmEvent& e);
  void FailConnect(Napi::Env env, Failure f);
  void Finish(Napi::Env env, WrRecord* rec, Result r);
  void Emit(Napi::Env env, const char* type, const Failure* f);
  void RequestDestroy(Napi::Env env);
  void Destroy(Napi::Env* env);
  void AfterDispatch(Napi::Env env);
  void UpdateRefs();
  uint32_t RemainingMs() const;
  // Hands queued work requests to the QP while send/recv/CQ credits last
  // (FIFO); once the endpoint is no longer connected, fails what is queued.
  void Pump(Napi::Env env);
  void FailRecord(Napi::Env env, WrRecord* rec, const Failure& f);

  State state_ = State::Connecting;
  EndpointOptions opts_;
  rdma_event_channel* ch_ = nullptr;
  rdma_cm_id* id_ = nullptr;
  std::shared_ptr<PdRes> pd_;
  bool pdChild_ = false;
  bool ownsPd_ = false;
  ibv_comp_channel* cc_ = nullptr;
  ibv_cq* cq_ = nullptr;
  bool hasQp_ = false;
  uint32_t maxInline_ = 0;
  unsigned unackedCqEvents_ = 0;
  bool armed_ = false;      // ibv_req_notify_cq done, its event not yet read
  bool deferEmit_ = false;  // inside a post: an 'error' event waits for the loop
  UvHandle* emitTimer_ = nullptr;
  UvHandle* cmPoll_ = nullptr;
  UvHandle* cqPoll_ = nullptr;
  UvHandle* timer_ = nullptr;
  uint64_t deadline_ = 0;  // uv_now at which connect/accept times out
  std::vector<uint8_t> privateData_;
  bool passive_ = false;
  bool accepted_ = false;  // rdma_accept called
  bool disconnectEmitted_ = false;
  bool destroyed_ = false;
  bool destroyPending_ = false;
  int dispatchDepth_ = 0;
  int inPost_ = 0;  // inside write()/post()/postAll(): events wait for the loop
  // Credits: the QP's real capacities (read back after rdma_create_qp) and the
  // CQ's real size; work requests beyond them wait in FIFO order.
  uint32_t maxSend_ = 0, maxRecv_ = 0, cqe_ = 0;
  uint32_t sendInUse_ = 0, recvInUse_ = 0;
  std::deque<WrRecord*> sendQueue_, recvQueue_;
  bool selfRef_ = false;
  std::unordered_set<WrRecord*> outstanding_;
  std::optional<Napi::Promise::Deferred> connectDeferred_;
  std::vector<Napi::Promise::Deferred> closeDeferreds_;
};

class Endpoint : public Napi::ObjectWrap<Endpoint> {
 public:
  static Napi::Function Define(Napi::Env env);
  static Napi::Object Wrap(Napi::Env env, std::shared_ptr<EndpointRes> res);
  explicit Endpoint(const Napi::CallbackInfo& info);
  static Endpoint* Unwrap(Napi::Object o) { return UnwrapThis<Endpoint>(o, kEndpointTag, "Endpoint"); }
  ~Endpoint() override;
  std::shared_ptr<EndpointRes> res() const { return res_; }

 private:
  Napi::Value State(const Napi::CallbackInfo& info);
  Napi::Value Pd(const Napi::CallbackInfo& info);
  Napi::Value LocalAddress(const Napi::CallbackInfo& info);
  Napi::Value RemoteAddress(const Napi::CallbackInfo& info);
  Napi::Value RemotePort(const Napi::CallbackInfo& info);
  Napi::Value PeerPrivateData(const Napi::CallbackInfo& info);
  Napi::Value InFlight(const Napi::CallbackInfo& info);
  Napi::Value Capacity(const Napi::CallbackInfo& info);
  Napi::Value GetBusyPoll(const Napi::CallbackInfo& info);
  void SetBusyPoll(const Napi::CallbackInfo& info, const Napi::Value& v);
  Napi::Value GetSpinUs(const Napi::CallbackInfo& info);
  void SetSpinUs(const Napi::CallbackInfo& info, const Napi::Value& v);
  Napi::Value GetOnEvent(const Napi::CallbackInfo& info);
  void SetOnEvent(const Napi::CallbackInfo& info, const Napi::Value& v);
  Napi::Value Write(const Napi::CallbackInfo& info);
  Napi::Value Read(const Napi::CallbackInfo& info);
  Napi::Value Send(const Napi::CallbackInfo& info);
  Napi::Value Recv(const Napi::CallbackInfo& info);
  Napi::Value CompareSwap(const Napi::CallbackInfo& info);
  Napi::Value FetchAdd(const Napi::CallbackInfo& info);
  Napi::Value Post(const Napi::CallbackInfo& info);
  Napi::Value Disconnect(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);
  Napi::Value PostOne(Napi::Env env, WrSpec spec, Batch::Kind kind);

  std::shared_ptr<EndpointRes> res_;
  Napi::ObjectReference pdObj_;
};

// connect(opts), postAll(items)
Napi::Value Connect(const Napi::CallbackInfo& info);
Napi::Value PostAll(const Napi::CallbackInfo& info);
// Parses an IPv4/IPv6 literal (or resolves a name) into ss.
bool ParseAddress(const std::string& host, int port, sockaddr_storage* ss, Failure* f);

}  // namespace npmu
