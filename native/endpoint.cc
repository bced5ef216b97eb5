#include "endpoint.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <sched.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>

#include "context.h"
#include "util/args.h"

namespace npmu {

namespace {

constexpr size_t kMaxConnectPrivateData = 56;
constexpr uint32_t kAcceptTimeoutMs = 10000;
constexpr uint32_t kCloseFlushTimeoutMs = 5000;
constexpr uint64_t kBusyPollLimitNs = 1000000000ull;
// Busy-poll: the clock is read only every this many empty polls (a clock read
// is a system call where the clocksource has no vDSO, ~6 us in the rxe VM), and
// sched_yield() every kSpinYieldEvery, so a softirq thread sharing the CPU runs.
constexpr unsigned kSpinClockEvery = 1024;
constexpr unsigned kSpinYieldEvery = 64;
// Hybrid polling (event mode, spinUs > 0): a budget of microseconds, so the
// clock is read more often (every kHybridClockEvery empty polls); at most 1 s.
constexpr unsigned kHybridClockEvery = 64;
constexpr int64_t kMaxSpinUs = 1000000;
// Completion events are acknowledged in batches (ibv_ack_cq_events takes a lock).
constexpr unsigned kCqEventAckBatch = 16;

// Scope guard for a depth counter: an exception cannot leave it wrong.
struct Depth {
  int& c;
  explicit Depth(int& counter) : c(counter) { ++c; }
  ~Depth() { --c; }
  Depth(const Depth&) = delete;
  Depth& operator=(const Depth&) = delete;
};

bool SetNonBlocking(int fd) {
  int fl = fcntl(fd, F_GETFL);
  return fl >= 0 && fcntl(fd, F_SETFL, fl | O_NONBLOCK) == 0;
}

Failure ChannelFailure(int err) {
  if (err == ENODEV || err == ENOENT || err == ENXIO || err == ENOSYS)
    return Failure::Npmu("ERR_NPMU_NO_DEVICE", "no RDMA device: cannot open the rdma_cm event channel", err,
                         "rdma_create_event_channel");
  return Failure::Errno(err, "rdma_create_event_channel");
}

Failure Unreachable(const char* syscall, int status, const std::string& what) {
  int err = status < 0 ? -status : 0;
  std::string msg = what;
  if (err) msg += std::string(": ") + std::strerror(err);
  return Failure::Npmu("ERR_NPMU_UNREACHABLE", msg, err, syscall);
}

}  // namespace

// ---- helpers ----------------------------------------------------------------

std::string AddrString(const sockaddr* sa) {
  char buf[INET6_ADDRSTRLEN] = "";
  if (!sa) return "";
  if (sa->sa_family == AF_INET)
    inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(sa)->sin_addr, buf, sizeof buf);
  else if (sa->sa_family == AF_INET6)
    inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6*>(sa)->sin6_addr, buf, sizeof buf);
  return buf;
}

bool ParseAddress(const std::string& host, int port, sockaddr_storage* ss, Failure* f) {
  memset(ss, 0, sizeof *ss);
  auto* v4 = reinterpret_cast<sockaddr_in*>(ss);
  auto* v6 = reinterpret_cast<sockaddr_in6*>(ss);
  if (inet_pton(AF_INET, host.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(static_cast<uint16_t>(port));
    return true;
  }
  if (inet_pton(AF_INET6, host.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(static_cast<uint16_t>(port));
    return true;
  }
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  int rc = getaddrinfo(host.c_str(), nullptr, &hints, &res);
  if (rc != 0 || !res) {
    *f = Failure::Npmu("ERR_NPMU_UNREACHABLE", "cannot resolve '" + host + "': " + gai_strerror(rc), 0,
                       "getaddrinfo");
    return false;
  }
  memcpy(ss, res->ai_addr, std::min<size_t>(res->ai_addrlen, sizeof *ss));
  freeaddrinfo(res);
  if (ss->ss_family == AF_INET) v4->sin_port = htons(static_cast<uint16_t>(port));
  else v6->sin6_port = htons(static_cast<uint16_t>(port));
  return true;
}

bool CmEvent::Next(rdma_event_channel* ch, CmEvent* out) {
  rdma_cm_event* ev = nullptr;
  if (!ch || rdma_get_cm_event(ch, &ev) != 0) return false;  // EAGAIN: drained
  out->type = ev->event;
  out->status = ev->status;
  out->id = ev->id;
  out->listenId = ev->listen_id;
  const rdma_conn_param& c = ev->param.conn;
  if (ev->event == RDMA_CM_EVENT_CONNECT_REQUEST || ev->event == RDMA_CM_EVENT_ESTABLISHED ||
      ev->event == RDMA_CM_EVENT_REJECTED || ev->event == RDMA_CM_EVENT_CONNECT_RESPONSE) {
    const uint8_t* p = static_cast<const uint8_t*>(c.private_data);
    out->privateData.assign(p, p ? p + c.private_data_len : p);
    out->initiatorDepth = c.initiator_depth;
    out->responderResources = c.responder_resources;
  } else {
    out->privateData.clear();
  }
  rdma_ack_cm_event(ev);  // after copying: the private data lives in the event
  return true;
}

EndpointOptions ParseEndpointOptions(Napi::Env env, Napi::Object opts, const std::string& prefix) {
  EndpointOptions o;
  Napi::Value pdV = Prop(opts, "pd");
  if (!pdV.IsUndefined() && !pdV.IsNull()) {
    ProtectionDomain* pd = UnwrapTagged<ProtectionDomain>(env, pdV, kPdTag, prefix + "pd", "ProtectionDomain");
    if (pd->res()->closed) ThrowNpmu(env, "ERR_NPMU_CLOSED", "protection domain is closed");
    o.pd = pd->res();
    o.pdObj = pdV.As<Napi::Object>();
  }
  o.sqDepth = static_cast<uint32_t>(OptInteger(env, Prop(opts, "sqDepth"), prefix + "sqDepth", 1, 65536, 128));
  o.rqDepth = static_cast<uint32_t>(OptInteger(env, Prop(opts, "rqDepth"), prefix + "rqDepth", 1, 65536, 128));
  o.maxInline = static_cast<uint32_t>(OptInteger(env, Prop(opts, "maxInline"), prefix + "maxInline", 0, 4096, 64));
  o.busyPoll = OptBool(env, Prop(opts, "busyPoll"), prefix + "busyPoll", false);
  o.spinUs = static_cast<uint32_t>(OptInteger(env, Prop(opts, "spinUs"), prefix + "spinUs", 0, kMaxSpinUs, 0));
  o.responderResources = static_cast<int>(
      OptInteger(env, Prop(opts, "responderResources"), prefix + "responderResources", 1, 255, -1));
  return o;
}

// ---- EndpointRes: life cycle ---------------------------------------------------

std::shared_ptr<EndpointRes> EndpointRes::Create(std::shared_ptr<Registry> reg, EndpointOptions opts,
                                                 Failure* failure) {
  std::shared_ptr<EndpointRes> ep(new EndpointRes());
  ep->reg = reg;
  ep->busyPoll = opts.busyPoll;
  ep->spinUs = opts.spinUs;
  ep->pd_ = opts.pd;
  ep->opts_ = opts;
  ep->opts_.pdObj = Napi::Object();
  errno = 0;
  ep->ch_ = rdma_create_event_channel();
  if (!ep->ch_) {
    *failure = ChannelFailure(errno ? errno : ENODEV);
    ep->destroyed_ = true;
    ep->state_ = State::Closed;
    return nullptr;
  }
  SetNonBlocking(ep->ch_->fd);
  reg->endpoints.insert(ep.get());
  EndpointRes* raw = ep.get();
  ep->cmPoll_ = UvHandle::Poll(reg, ep, ep->ch_->fd, [raw](int, int) { raw->OnCmReadable(); });
  if (!ep->cmPoll_) {
    *failure = Failure::Errno(EINVAL, "uv_poll_init");
    ep->DestroyNow();
    return nullptr;
  }
  return ep;
}

EndpointRes::~EndpointRes() {
  Destroy(nullptr);
  if (!reg->alive) pdObj.SuppressDestruct();
}

uint32_t EndpointRes::RemainingMs() const {
  uv_update_time(reg->loop);
  uint64_t now = uv_now(reg->loop);
  return deadline_ > now ? static_cast<uint32_t>(deadline_ - now) : 1;
}

Napi::Promise EndpointRes::StartConnect(Napi::Env env, const sockaddr* dst, uint32_t timeoutMs,
                                        std::vector<uint8_t> privateData) {
  connectDeferred_.emplace(Napi::Promise::Deferred::New(env));
  Napi::Promise promise = connectDeferred_->Promise();
  privateData_ = std::move(privateData);
  state_ = State::Connecting;
  uv_update_time(reg->loop);  // the cached loop time may be stale
  deadline_ = uv_now(reg->loop) + timeoutMs;
  EndpointRes* raw = this;
  timer_ = UvHandle::Timer(reg, shared_from_this(), timeoutMs, [raw](int, int) {
    raw->timer_->Close();
    raw->timer_ = nullptr;
    RunCallback(raw->reg.get(), [raw](Napi::Env env) {
      raw->FailConnect(env, Failure::Npmu("ERR_NPMU_TIMEOUT", "connect timed out", ETIMEDOUT, "rdma_connect"));
    });
  });
  if (rdma_create_id(ch_, &id_, this, RDMA_PS_TCP) != 0) {
    id_ = nullptr;
    FailConnect(env, Failure::Errno(errno, "rdma_create_id"));
  } else if (rdma_resolve_addr(id_, nullptr, const_cast<sockaddr*>(dst), static_cast<int>(timeoutMs)) != 0) {
    FailConnect(env, Unreachable("rdma_resolve_addr", -errno, "cannot resolve the address"));
  }
  return promise;
}

Napi::Promise EndpointRes::StartAccept(Napi::Env env, rdma_cm_id* id, uint8_t peerInitiatorDepth,
                                       uint8_t peerResponderResources, std::vector<uint8_t> privateData,
                                       std::vector<uint8_t> peerPd) {
  connectDeferred_.emplace(Napi::Promise::Deferred::New(env));
  Napi::Promise promise = connectDeferred_->Promise();
  passive_ = true;
  state_ = State::Accepting;
  peerPrivateData = std::move(peerPd);
  AcceptSteps(env, id, peerInitiatorDepth, peerResponderResources, std::move(privateData));
  return promise;
}

void EndpointRes::AcceptSteps(Napi::Env env, rdma_cm_id* id, uint8_t peerInitiatorDepth,
                              uint8_t peerResponderResources, std::vector<uint8_t> privateData) {
  if (rdma_migrate_id(id, ch_) != 0) {
    int err = errno;
    rdma_reject(id, nullptr, 0);
    rdma_destroy_id(id);
    return FailConnect(env, Failure::Errno(err, "rdma_migrate_id"));
  }
  id_ = id;
  id_->context = this;
  Failure f;
  if (pd_ && pd_->ctx->ctx != id_->verbs) {
    return FailConnect(env, Failure::Npmu("EINVAL", "opts.pd is on another device than the connection", EINVAL,
                                          "rdma_accept"));
  }
  if (!CreateQueues(&f)) return FailConnect(env, f);
  ibv_device_attr da{};
  ibv_query_device(id_->verbs, &da);
  int want = opts_.responderResources > 0 ? opts_.responderResources : 16;
  rdma_conn_param p{};
  p.private_data = privateData.empty() ? nullptr : privateData.data();
  p.private_data_len = static_cast<uint8_t>(privateData.size());
  p.responder_resources = static_cast<uint8_t>(std::min({want, da.max_qp_rd_atom, int(peerInitiatorDepth)}));
  p.initiator_depth = static_cast<uint8_t>(std::min({want, da.max_qp_init_rd_atom, int(peerResponderResources)}));
  p.retry_count = 7;
  p.rnr_retry_count = 7;
  if (rdma_accept(id_, &p) != 0) return FailConnect(env, Failure::Errno(errno, "rdma_accept"));
  accepted_ = true;
  cmPoll_->Ref(true);
  EndpointRes* raw = this;
  timer_ = UvHandle::Timer(reg, shared_from_this(), kAcceptTimeoutMs, [raw](int, int) {
    raw->timer_->Close();
    raw->timer_ = nullptr;
    RunCallback(raw->reg.get(), [raw](Napi::Env env) {
      raw->FailConnect(env, Failure::Npmu("ERR_NPMU_TIMEOUT", "accept timed out", ETIMEDOUT, "rdma_accept"));
    });
  });
}

bool EndpointRes::CreateQueues(Failure* f) {
  ibv_context* verbs = id_->verbs;
  if (!pd_) {
    auto ctx = ContextRes::ForVerbs(reg, verbs, f);
    if (!ctx) return false;
    pd_ = PdRes::Alloc(ctx, f);
    if (!pd_) {
      ctx->Close();
      return false;
    }
    pd_->ownsCtx = true;
    ownsPd_ = true;
  }
  if (pd_->closed) {
    *f = Failure::Npmu("ERR_NPMU_CLOSED", "protection domain is closed");
    return false;
  }
  pd_->AddChild();
  pdChild_ = true;
  errno = 0;
  cc_ = ibv_create_comp_channel(verbs);
  if (!cc_) {
    *f = Failure::Errno(errno ? errno : ENOMEM, "ibv_create_comp_channel");
    return false;
  }
  SetNonBlocking(cc_->fd);
  cq_ = ibv_create_cq(verbs, static_cast<int>(opts_.sqDepth + opts_.rqDepth), nullptr, cc_, 0);
  if (!cq_) {
    *f = Failure::Errno(errno ? errno : ENOMEM, "ibv_create_cq");
    return false;
  }
  int rc = ibv_req_notify_cq(cq_, 0);
  if (rc) {
    *f = Failure::Errno(rc, "ibv_req_notify_cq");
    return false;
  }
  armed_ = true;
  ibv_qp_init_attr a{};
  a.send_cq = cq_;
  a.recv_cq = cq_;
  a.qp_type = IBV_QPT_RC;
  a.sq_sig_all = 0;
  a.cap.max_send_wr = opts_.sqDepth;
  a.cap.max_recv_wr = opts_.rqDepth;
  a.cap.max_send_sge = 1;
  a.cap.max_recv_sge = 1;
  a.cap.max_inline_data = opts_.maxInline;
  // maxInline is a request: a device that refuses it gets the QP with a smaller
  // inline limit (halved down to 64, then 0) rather than no QP.
  int qpErr = 0;
  for (;;) {
    if (rdma_create_qp(id_, pd_->pd, &a) == 0) break;
    if (!qpErr) qpErr = errno ? errno : EINVAL;
    uint32_t lower = a.cap.max_inline_data > 64 ? std::max<uint32_t>(64, a.cap.max_inline_data / 2) : 0;
    if (a.cap.max_inline_data == 0) {
      *f = Failure::Errno(qpErr, "rdma_create_qp");
      return false;
    }
    a.cap.max_inline_data = lower;
    a.cap.max_send_wr = opts_.sqDepth;  // the provider may have written the caps
    a.cap.max_recv_wr = opts_.rqDepth;
    a.cap.max_send_sge = 1;
    a.cap.max_recv_sge = 1;
  }
  hasQp_ = true;
  maxInline_ = a.cap.max_inline_data;
  // The provider may round the queues up (rxe does): count credits against
  // what the QP really has, and make the CQ hold a completion for every slot.
  maxSend_ = a.cap.max_send_wr ? a.cap.max_send_wr : opts_.sqDepth;
  maxRecv_ = a.cap.max_recv_wr ? a.cap.max_recv_wr : opts_.rqDepth;
  uint32_t need = maxSend_ + maxRecv_;
  if (static_cast<uint32_t>(cq_->cqe) < need) ibv_resize_cq(cq_, static_cast<int>(need));
  cqe_ = static_cast<uint32_t>(cq_->cqe);
  if (cqe_ < need) {
    // The CQ could not grow: shrink the credits so it can never overflow.
    maxRecv_ = std::min(maxRecv_, std::max<uint32_t>(1, cqe_ / 2));
    maxSend_ = std::min(maxSend_, cqe_ > maxRecv_ ? cqe_ - maxRecv_ : 1);
  }
  EndpointRes* raw = this;
  cqPoll_ = UvHandle::Poll(reg, shared_from_this(), cc_->fd, [raw](int, int) { raw->OnCqReadable(); });
  if (!cqPoll_) {
    *f = Failure::Errno(EINVAL, "uv_poll_init");
    return false;
  }
  cqPoll_->Ref(false);
  return true;
}

void EndpointRes::FailConnect(Napi::Env env, Failure f) {
  if (state_ != State::Connecting && state_ != State::Accepting) return;
  if (passive_ && !accepted_ && id_) rdma_reject(id_, nullptr, 0);
  state_ = State::Closing;
  if (connectDeferred_) {
    connectDeferred_->Reject(MakeError(env, f).Value());
    connectDeferred_.reset();
  }
  RequestDestroy(env);
}

void EndpointRes::Established(Napi::Env env, const CmEvent& e) {
  if (timer_) {
    timer_->Close();
    timer_ = nullptr;
  }
  state_ = State::Connected;
  if (!passive_) peerPrivateData = e.privateData;
  localAddress = AddrString(rdma_get_local_addr(id_));
  remoteAddress = AddrString(rdma_get_peer_addr(id_));
  remotePort = ntohs(rdma_get_dst_port(id_));
  Napi::Object obj = Endpoint::Wrap(env, shared_from_this());
  UpdateRefs();
  if (connectDeferred_) {
    connectDeferred_->Resolve(obj);
    connectDeferred_.reset();
  }
}

// ---- rdma_cm events -------------------------------------------------------------

void EndpointRes::OnCmReadable() {
  auto self = shared_from_this();
  RunCallback(reg.get(), [this](Napi::Env env) {
    {
      Depth depth(dispatchDepth_);
      CmEvent e;
      while (!destroyed_ && CmEvent::Next(ch_, &e)) {
        HandleCm(env, e);
        // Let the connect/accept continuation run (and set onEvent) before a
        // DISCONNECTED queued behind ESTABLISHED is handled: the fd stays readable.
        if (e.type == RDMA_CM_EVENT_ESTABLISHED) break;
      }
    }
    AfterDispatch(env);
  });
}

void EndpointRes::HandleCm(Napi::Env env, const CmEvent& e) {
  if (state_ == State::Connecting) {
    switch (e.type) {
      case RDMA_CM_EVENT_ADDR_RESOLVED:
        if (pd_ && pd_->ctx->ctx != id_->verbs)
          return FailConnect(env, Failure::Npmu("EINVAL",
                                                "opts.pd is on device " + pd_->ctx->name +
                                                    ", the route to the peer uses " +
                                                    ibv_get_device_name(id_->verbs->device),
                                                EINVAL, "rdma_resolve_addr"));
        if (rdma_resolve_route(id_, static_cast<int>(RemainingMs())) != 0)
          return FailConnect(env, Unreachable("rdma_resolve_route", -errno, "cannot resolve the route"));
        return;
      case RDMA_CM_EVENT_ROUTE_RESOLVED: {
        Failure f;
        if (!CreateQueues(&f)) return FailConnect(env, f);
        ibv_device_attr da{};
        ibv_query_device(id_->verbs, &da);
        int want = opts_.responderResources > 0 ? opts_.responderResources : 16;
        rdma_conn_param p{};
        p.private_data = privateData_.empty() ? nullptr : privateData_.data();
        p.private_data_len = static_cast<uint8_t>(privateData_.size());
        p.responder_resources = static_cast<uint8_t>(std::min(want, da.max_qp_rd_atom));
        p.initiator_depth = static_cast<uint8_t>(std::min(want, da.max_qp_init_rd_atom));
        p.retry_count = 7;
        p.rnr_retry_count = 7;
        if (rdma_connect(id_, &p) != 0)
          return FailConnect(env, Unreachable("rdma_connect", -errno, "cannot connect"));
        return;
      }
      case RDMA_CM_EVENT_ESTABLISHED:
        return Established(env, e);
      case RDMA_CM_EVENT_REJECTED: {
        // IB CM reject reasons: 28 = consumer (rdma_reject), 8 = no listener
        std::string why = e.status == 28  ? "connection rejected by the peer"
                          : e.status == 8 ? "connection refused: no listener on that port"
                                          : "connection rejected";
        Failure f = Failure::Npmu("ERR_NPMU_REJECTED", why + " (reject reason " + std::to_string(e.status) + ")",
                                  ECONNREFUSED, "rdma_connect");
        f.privateData = std::make_shared<std::vector<uint8_t>>(e.privateData);
        return FailConnect(env, f);
      }
      case RDMA_CM_EVENT_ADDR_ERROR:
        return FailConnect(env, Unreachable("rdma_resolve_addr", e.status, "address resolution failed"));
      case RDMA_CM_EVENT_ROUTE_ERROR:
        return FailConnect(env, Unreachable("rdma_resolve_route", e.status, "route resolution failed"));
      case RDMA_CM_EVENT_UNREACHABLE:
      case RDMA_CM_EVENT_CONNECT_ERROR:
      case RDMA_CM_EVENT_DISCONNECTED:
      case RDMA_CM_EVENT_DEVICE_REMOVAL:
        return FailConnect(env, Unreachable("rdma_connect", e.status, "peer unreachable"));
      default:
        return;
    }
  }
  if (state_ == State::Accepting) {
    switch (e.type) {
      case RDMA_CM_EVENT_ESTABLISHED:
        return Established(env, e);
      case RDMA_CM_EVENT_REJECTED:
      case RDMA_CM_EVENT_UNREACHABLE:
      case RDMA_CM_EVENT_CONNECT_ERROR:
      case RDMA_CM_EVENT_DISCONNECTED:
      case RDMA_CM_EVENT_DEVICE_REMOVAL:
        return FailConnect(env, Unreachable("rdma_accept", e.status, "connection failed before establishment"));
      default:
        return;
    }
  }
  switch (e.type) {
    case RDMA_CM_EVENT_DISCONNECTED:
    case RDMA_CM_EVENT_DEVICE_REMOVAL:
      if (state_ == State::Connected || state_ == State::Error) {
        rdma_disconnect(id_);  // our QP to error: pending work flushes
        state_ = State::Disconnected;
      }
      if (!disconnectEmitted_ && (state_ == State::Disconnected)) {
        disconnectEmitted_ = true;
        Emit(env, "disconnected", nullptr);
      }
      UpdateRefs();
      return;
    default:
      return;
  }
}

// ---- completions ---------------------------------------------------------------

void EndpointRes::OnCqReadable() {
  auto self = shared_from_this();
  RunCallback(reg.get(), [this](Napi::Env env) {
    {
    Depth depth(dispatchDepth_);
    // One notification per arming: read one event (a second read would only
    // fail with EAGAIN; if more were queued the fd stays readable and uv_poll
    // calls again). Events are acked in batches; Destroy acks the rest.
    ibv_cq* evCq = nullptr;
    void* evCtx = nullptr;
    if (!destroyed_ && cc_ && ibv_get_cq_event(cc_, &evCq, &evCtx) == 0) {
      armed_ = false;
      if (++unackedCqEvents_ >= kCqEventAckBatch) {
        ibv_ack_cq_events(cq_, unackedCqEvents_);
        unackedCqEvents_ = 0;
      }
    }
    DrainCq(env);
    EnsureArmed(env);
    }
    AfterDispatch(env);
  });
}

// Work still out needs a notification: arm the CQ, then drain once more, since
// a completion that came between the last poll and the arming raises no event.
// Nothing out: stay unarmed (no event, no wakeup, no re-arm system call).
void EndpointRes::EnsureArmed(Napi::Env env) {
  if (destroyed_ || !cq_ || armed_ || outstanding_.empty()) return;
  if (ibv_req_notify_cq(cq_, 0) != 0) return;  // not armed: the next post or event tries again
  armed_ = true;
  DrainCq(env);
}

void EndpointRes::DrainCq(Napi::Env env) {
  ibv_wc wc[16];
  for (;;) {
    if (destroyed_ || !cq_) return;
    int n = ibv_poll_cq(cq_, 16, wc);
    if (n <= 0) return;
    for (int i = 0; i < n; i++) HandleWc(env, wc[i]);
    Pump(env);  // completions freed credits: queued work goes out
  }
}

void EndpointRes::HandleWc(Napi::Env env, const ibv_wc& wc) {
  WrRecord* rec = reinterpret_cast<WrRecord*>(static_cast<uintptr_t>(wc.wr_id));
  if (!outstanding_.count(rec)) return;
  Result r;
  bool emitError = false;
  if (wc.status == IBV_WC_SUCCESS) {
    r.ok = true;
    if (rec->op == Op::Recv) {
      r.hasByteLength = true;
      r.byteLength = wc.byte_len;
    } else if (rec->op == Op::Cas || rec->op == Op::Faa) {
      r.hasValue = true;
      memcpy(&r.value, rec->local, 8);
    }
  } else {
    r.failure = Failure::Npmu(WcStatusName(wc.status),
                              std::string(OpName(rec->op)) + " failed: " + ibv_wc_status_str(wc.status) +
                                  " (vendor error " + std::to_string(wc.vendor_err) + ")",
                              0, "ibv_poll_cq");
    if (state_ == State::Connected) {
      state_ = State::Error;
      emitError = true;
    }
  }
  Failure f = r.failure;
  Finish(env, rec, std::move(r));
  if (emitError) {
    // Never re-entrantly: inside write()/post()/postAll() (event or busy-poll
    // mode) the event goes out from the event loop.
    if (deferEmit_ || inPost_ > 0) EmitLater(f);
    else Emit(env, "error", &f);
  }
}

void EndpointRes::Finish(Napi::Env env, WrRecord* rec, Result r) {
  if (rec->posted) {
    rec->posted = false;
    if (rec->isRecv) recvInUse_--;
    else sendInUse_--;
  }
  outstanding_.erase(rec);
  if (rec->mr) rec->mr->inflight--;
  if (rec->groupPending) --*rec->groupPending;
  std::shared_ptr<Batch> batch = std::move(rec->batch);
  size_t slot = rec->slot;
  rec->mrObj.Reset();
  delete rec;
  batch->Complete(env, slot, std::move(r));
  if (outstanding_.empty()) {
    if (state_ == State::Closing) RequestDestroy(env);
    UpdateRefs();
  }
}

void EndpointRes::Emit(Napi::Env env, const char* type, const Failure* f) {
  // onEvent is a property of the JS object: no JS object, no listener.
  if (!wrapper || !reg->alive || state_ == State::Closed) return;
  Napi::Object self = wrapper->Value();
  if (self.IsEmpty()) return;
  Napi::Value fnV = self.Get(OnEventKey(env));
  if (!fnV.IsFunction()) return;
  Napi::Object ev = Napi::Object::New(env);
  ev.Set("type", Napi::String::New(env, type));
  if (f) ev.Set("error", MakeError(env, *f).Value());
  try {
    fnV.As<Napi::Function>().Call(self, {ev});
  } catch (const Napi::Error& e) {
    napi_fatal_exception(env, e.Value());
  }
}

// An 'error' event found by the poll right after an event-mode post goes out
// from the event loop, as it would have without that poll: the caller of
// write()/post() does not see onEvent run inside its call.
void EndpointRes::EmitLater(const Failure& f) {
  if (emitTimer_ || destroyed_) return;  // at most one: the state is 'error' from now on
  EndpointRes* raw = this;
  emitTimer_ = UvHandle::Timer(reg, shared_from_this(), 0, [raw, f](int, int) {
    raw->emitTimer_->Close();
    raw->emitTimer_ = nullptr;
    RunCallback(raw->reg.get(), [raw, f](Napi::Env env) { raw->Emit(env, "error", &f); });
  });
}

// ---- posting -------------------------------------------------------------------

std::shared_ptr<size_t> EndpointRes::Post(Napi::Env env, std::vector<WrSpec>& specs,
                                          const std::vector<size_t>& slots, const std::shared_ptr<Batch>& batch,
                                          bool spin) {
  Depth post(inPost_);
  size_t n = specs.size();
  auto pending = std::make_shared<size_t>(0);
  for (size_t i = 0; i < n; i++) {
    WrSpec& s = specs[i];
    auto* rec = new WrRecord();
    rec->ep = this;
    rec->op = s.op;
    rec->mr = s.mr;
    rec->mrObj = Napi::Persistent(s.mrObj);
    rec->local = s.mr->addr + s.offset;
    rec->batch = batch;
    rec->slot = slots[i];
    ibv_sge& g = rec->sge;
    g.addr = reinterpret_cast<uintptr_t>(s.mr->addr + s.offset);
    g.length = static_cast<uint32_t>(s.length);
    g.lkey = s.mr->lkey;
    // All records count as in flight (and hold their MR) from now on.
    outstanding_.insert(rec);
    rec->mr->inflight++;
    if (s.op == Op::Recv) {
      // busy-poll does not wait for recvs: they complete when the peer sends
      rec->isRecv = true;
      ibv_recv_wr& w = rec->rwr;
      w.wr_id = reinterpret_cast<uintptr_t>(rec);
      w.sg_list = &g;
      w.num_sge = s.length ? 1 : 0;
      recvQueue_.push_back(rec);
      continue;
    }
    rec->groupPending = pending;
    ++*pending;
    ibv_send_wr& w = rec->swr;
    w.wr_id = reinterpret_cast<uintptr_t>(rec);
    w.sg_list = &g;
    w.num_sge = s.length ? 1 : 0;
    w.send_flags = IBV_SEND_SIGNALED;
    switch (s.op) {
      case Op::Write:
        w.opcode = IBV_WR_RDMA_WRITE;
        break;
      case Op::Read:
        w.opcode = IBV_WR_RDMA_READ;
        break;
      case Op::Send:
        w.opcode = IBV_WR_SEND;
        break;
      case Op::Cas:
        w.opcode = IBV_WR_ATOMIC_CMP_AND_SWP;
        break;
      default:
        w.opcode = IBV_WR_ATOMIC_FETCH_AND_ADD;
        break;
    }
    if ((s.op == Op::Write || s.op == Op::Send) && s.length > 0 && s.length <= maxInline_)
      w.send_flags |= IBV_SEND_INLINE;
    if (s.op == Op::Cas || s.op == Op::Faa) {
      w.wr.atomic.remote_addr = s.remoteAddr;
      w.wr.atomic.rkey = s.rkey;
      w.wr.atomic.compare_add = s.compare;
      w.wr.atomic.swap = s.swap;
    } else if (s.op != Op::Send) {
      w.wr.rdma.remote_addr = s.remoteAddr;
      w.wr.rdma.rkey = s.rkey;
    }
    sendQueue_.push_back(rec);
  }
  if (cqPoll_) cqPoll_->Ref(true);
  UpdateRefs();
  {
    Depth depth(dispatchDepth_);
    Pump(env);
  }
  if (spin) Reap(env, pending);
  AfterDispatch(env);
  return pending;
}

std::shared_ptr<size_t> EndpointRes::PostRecords(Napi::Env env, WrRecord* const* recs, size_t n) {
  Depth post(inPost_);
  auto pending = std::make_shared<size_t>(n);
  for (size_t i = 0; i < n; i++) {
    WrRecord* rec = recs[i];
    rec->ep = this;
    rec->groupPending = pending;
    rec->swr.wr_id = reinterpret_cast<uintptr_t>(rec);
    rec->swr.sg_list = &rec->sge;
    outstanding_.insert(rec);
    if (rec->mr) rec->mr->inflight++;
    sendQueue_.push_back(rec);
  }
  if (cqPoll_) cqPoll_->Ref(true);
  UpdateRefs();
  {
    Depth depth(dispatchDepth_);
    Pump(env);
  }
  AfterDispatch(env);
  return pending;
}

void EndpointRes::FailRecord(Napi::Env env, WrRecord* rec, const Failure& f) {
  Result r;
  r.failure = f;
  Finish(env, rec, std::move(r));
}

void EndpointRes::Pump(Napi::Env env) {
  if (destroyed_) return;
  if (state_ != State::Connected) {
    // The QP is in error or going away: what never reached it flushes, as the
    // work on it does.
    while (!sendQueue_.empty() || !recvQueue_.empty()) {
      auto& q = sendQueue_.empty() ? recvQueue_ : sendQueue_;
      WrRecord* rec = q.front();
      q.pop_front();
      FailRecord(env, rec,
                 Failure::Npmu("IBV_WC_WR_FLUSH_ERR",
                               std::string(OpName(rec->op)) + " flushed: endpoint is " + StateName(), 0,
                               "ibv_post_send"));
    }
    return;
  }
  auto cqFree = [this]() { return cqe_ > sendInUse_ + recvInUse_ ? cqe_ - sendInUse_ - recvInUse_ : 0; };
  // Receives first: a send may be what makes the peer answer.
  while (!recvQueue_.empty() && recvInUse_ < maxRecv_ && cqFree() > 0) {
    size_t k = std::min<size_t>({recvQueue_.size(), maxRecv_ - recvInUse_, cqFree()});
    std::vector<WrRecord*> batch(recvQueue_.begin(), recvQueue_.begin() + static_cast<long>(k));
    recvQueue_.erase(recvQueue_.begin(), recvQueue_.begin() + static_cast<long>(k));
    for (size_t i = 0; i < k; i++) {
      batch[i]->rwr.next = i + 1 < k ? &batch[i + 1]->rwr : nullptr;
      batch[i]->posted = true;
    }
    recvInUse_ += static_cast<uint32_t>(k);
    ibv_recv_wr* bad = nullptr;
    int rc = ibv_post_recv(id_->qp, &batch[0]->rwr, &bad);
    if (rc) {
      bool seen = bad == nullptr;
      for (WrRecord* rec : batch) {
        if (&rec->rwr == bad) seen = true;
        if (seen) FailRecord(env, rec, Failure::Errno(rc, "ibv_post_recv"));
      }
      break;
    }
  }
  while (!sendQueue_.empty() && sendInUse_ < maxSend_ && cqFree() > 0) {
    size_t k = std::min<size_t>({sendQueue_.size(), maxSend_ - sendInUse_, cqFree()});
    std::vector<WrRecord*> batch(sendQueue_.begin(), sendQueue_.begin() + static_cast<long>(k));
    sendQueue_.erase(sendQueue_.begin(), sendQueue_.begin() + static_cast<long>(k));
    for (size_t i = 0; i < k; i++) {
      batch[i]->swr.next = i + 1 < k ? &batch[i + 1]->swr : nullptr;
      batch[i]->posted = true;
    }
    sendInUse_ += static_cast<uint32_t>(k);
    ibv_send_wr* bad = nullptr;
    int rc = ibv_post_send(id_->qp, &batch[0]->swr, &bad);
    if (rc) {
      bool seen = bad == nullptr;
      for (WrRecord* rec : batch) {
        if (&rec->swr == bad) seen = true;
        if (seen) FailRecord(env, rec, Failure::Errno(rc, "ibv_post_send"));
      }
      break;
    }
  }
}

void EndpointRes::Reap(Napi::Env env, const std::shared_ptr<size_t>& pending) {
  auto self = shared_from_this();
  if (busyPoll) {
    // Spin until this post's work is in (bounded by 1 s; the rest then
    // completes through the completion channel).
    SpinFor(env, pending, kBusyPollLimitNs, kSpinClockEvery);
  } else if (*pending > 0 && spinUs > 0) {
    // Hybrid polling: the same, for up to spinUs, before arming the CQ and
    // leaving the rest to the completion channel (and the event loop).
    SpinFor(env, pending, static_cast<uint64_t>(spinUs) * 1000u, kHybridClockEvery);
  } else if (*pending > 0) {
    // Event mode: one non-blocking poll. On soft-RoCE the round trip often
    // completes inside ibv_post_send, and then this settles the promise now
    // instead of one event-loop turn, a completion-channel read and a re-arm
    // later. It costs one ibv_poll_cq (no system call) when nothing is there.
    Depth depth(dispatchDepth_);
    Depth post(inPost_);
    DrainCq(env);
  }
  {
    Depth depth(dispatchDepth_);
    Depth post(inPost_);
    EnsureArmed(env);  // recvs, or sends the poll/spin did not see complete
  }
  AfterDispatch(env);
}

void EndpointRes::SpinFor(Napi::Env env, const std::shared_ptr<size_t>& pending, uint64_t limitNs,
                          unsigned clockEvery) {
  uint64_t start = 0;  // first clock read, after clockEvery empty polls
  ibv_wc wc[16];
  Depth depth(dispatchDepth_);
  Depth post(inPost_);
  unsigned idle = 0;
  while (*pending > 0 && !destroyed_ && cq_) {
    int n = ibv_poll_cq(cq_, 16, wc);
    if (n < 0) break;
    for (int i = 0; i < n; i++) HandleWc(env, wc[i]);
    if (n > 0) {
      Pump(env);
      continue;
    }
    ++idle;
    if (idle % clockEvery == 0) {
      // The bound counts from the first reading: at most clockEvery polls
      // more than limitNs. Most posts complete before any clock read.
      uint64_t now = uv_hrtime();
      if (!start) start = now;
      else if (now - start > limitNs) break;
    }
    if (idle % kSpinYieldEvery == 0) sched_yield();
  }
}

// ---- close -----------------------------------------------------------------------

void EndpointRes::Disconnect() {
  if (state_ == State::Connected || state_ == State::Error) {
    rdma_disconnect(id_);
    state_ = State::Disconnected;
    UpdateRefs();
  }
}

Napi::Value EndpointRes::Close(Napi::Env env) {
  auto d = Napi::Promise::Deferred::New(env);
  if (destroyed_ || state_ == State::Closed) {
    d.Resolve(env.Undefined());
    return d.Promise();
  }
  closeDeferreds_.push_back(d);
  if (state_ != State::Closing) {
    State prev = state_;
    state_ = State::Closing;
    if (id_ && hasQp_ && (prev == State::Connected || prev == State::Error || prev == State::Disconnected))
      rdma_disconnect(id_);  // QP to error: in-flight work flushes
    if (!outstanding_.empty()) {
      if (cmPoll_) cmPoll_->Ref(true);
      EndpointRes* raw = this;
      if (timer_) timer_->Close();
      timer_ = UvHandle::Timer(reg, shared_from_this(), kCloseFlushTimeoutMs, [raw](int, int) {
        raw->timer_->Close();
        raw->timer_ = nullptr;
        RunCallback(raw->reg.get(), [raw](Napi::Env env) { raw->RequestDestroy(env); });
      });
    }
    UpdateRefs();
  }
  if (outstanding_.empty()) RequestDestroy(env);
  return d.Promise();
}

void EndpointRes::RequestDestroy(Napi::Env env) {
  if (dispatchDepth_ > 0) {
    destroyPending_ = true;
    return;
  }
  Destroy(&env);
}

void EndpointRes::AfterDispatch(Napi::Env env) {
  if (dispatchDepth_ == 0 && destroyPending_) {
    destroyPending_ = false;
    Destroy(&env);
  }
}

void EndpointRes::DestroyNow() {
  if (dispatchDepth_ > 0) {
    destroyPending_ = true;
    return;
  }
  Destroy(nullptr);
}

void EndpointRes::Destroy(Napi::Env* env) {
  if (destroyed_) return;
  destroyed_ = true;
  auto self = weak_from_this().lock();  // may be null when called from the destructor
  bool js = env && reg->alive;
  // Work the QP never completed (forced close, teardown): fail or drop it.
  sendQueue_.clear();
  recvQueue_.clear();
  sendInUse_ = recvInUse_ = 0;
  std::vector<WrRecord*> left(outstanding_.begin(), outstanding_.end());
  for (WrRecord* rec : left) {
    if (js) {
      Result r;
      r.failure = Failure::Npmu("IBV_WC_WR_FLUSH_ERR", std::string(OpName(rec->op)) + " flushed: endpoint closed",
                                0, "ibv_poll_cq");
      outstanding_.erase(rec);
      if (rec->mr) rec->mr->inflight--;
      std::shared_ptr<Batch> batch = std::move(rec->batch);
      size_t slot = rec->slot;
      if (rec->groupPending) --*rec->groupPending;
      rec->mrObj.Reset();
      delete rec;
      batch->Complete(*env, slot, r);
    } else {
      outstanding_.erase(rec);
      if (rec->mr) rec->mr->inflight--;
      if (rec->groupPending) --*rec->groupPending;
      if (!reg->alive) rec->mrObj.SuppressDestruct();
      delete rec;
    }
  }
  for (UvHandle** h : {&cmPoll_, &cqPoll_, &timer_, &emitTimer_}) {
    if (*h) (*h)->Close();
    *h = nullptr;
  }
  if (id_ && hasQp_) rdma_destroy_qp(id_);
  hasQp_ = false;
  if (cq_) {
    if (unackedCqEvents_) ibv_ack_cq_events(cq_, unackedCqEvents_);
    unackedCqEvents_ = 0;
    ibv_destroy_cq(cq_);
    cq_ = nullptr;
  }
  if (cc_) ibv_destroy_comp_channel(cc_);
  cc_ = nullptr;
  if (id_) rdma_destroy_id(id_);
  id_ = nullptr;
  if (ch_) rdma_destroy_event_channel(ch_);
  ch_ = nullptr;
  if (pd_) {
    if (ownsPd_) pd_->autoClose = true;
    if (pdChild_) pd_->RemoveChild();
    else if (ownsPd_ && pd_->children <= 0) pd_->Close();
    pdChild_ = false;
  }
  state_ = State::Closed;
  reg->endpoints.erase(this);
  if (js) {
    if (connectDeferred_) {
      connectDeferred_->Reject(MakeError(*env, Failure::Npmu("ERR_NPMU_CLOSED", "endpoint closed")).Value());
      connectDeferred_.reset();
    }
    for (auto& d : closeDeferreds_) d.Resolve(env->Undefined());
  }
  connectDeferred_.reset();
  closeDeferreds_.clear();
  if (reg->alive) pdObj.Reset();
  UpdateRefs();
}

void EndpointRes::UpdateRefs() {
  // libuv: the process stays up while a connect/accept/close is pending or
  // work is in flight, not for an idle connection.
  if (cmPoll_) cmPoll_->Ref(state_ == State::Connecting || state_ == State::Accepting || state_ == State::Closing);
  if (cqPoll_) cqPoll_->Ref(!outstanding_.empty());
  // GC: the JS object stays alive while connected, closing or with work in
  // flight; after that JS may drop it and its finalizer tears down.
  bool want = wrapper && !destroyed_ &&
              (state_ == State::Connected || state_ == State::Closing || !outstanding_.empty());
  if (!reg->alive || reg->reaping) return;
  if (want && !selfRef_) {
    wrapper->Ref();
    selfRef_ = true;
  } else if (!want && selfRef_ && wrapper) {
    wrapper->Unref();
    selfRef_ = false;
  }
}

const char* EndpointRes::StateName() const {
  switch (state_) {
    case State::Connecting:
      return "connecting";
    case State::Accepting:
      return "accepting";
    case State::Connected:
      return "connected";
    case State::Error:
      return "error";
    case State::Disconnected:
      return "disconnected";
    case State::Closing:
      return "closing";
    default:
      return "closed";
  }
}

// ---- Endpoint (JS) -----------------------------------------------------------------

Napi::Function Endpoint::Define(Napi::Env env) {
  return DefineClass(
      env, "Endpoint",
      {
          InstanceAccessor<&Endpoint::State>("state"),
          InstanceAccessor<&Endpoint::Pd>("pd"),
          InstanceAccessor<&Endpoint::LocalAddress>("localAddress"),
          InstanceAccessor<&Endpoint::RemoteAddress>("remoteAddress"),
          InstanceAccessor<&Endpoint::RemotePort>("remotePort"),
          InstanceAccessor<&Endpoint::PeerPrivateData>("peerPrivateData"),
          InstanceAccessor<&Endpoint::InFlight>("inFlight"),
          InstanceAccessor<&Endpoint::Capacity>("capacity"),
          InstanceAccessor<&Endpoint::GetBusyPoll, &Endpoint::SetBusyPoll>("busyPoll"),
          InstanceAccessor<&Endpoint::GetSpinUs, &Endpoint::SetSpinUs>("spinUs"),
          InstanceAccessor<&Endpoint::GetOnEvent, &Endpoint::SetOnEvent>("onEvent"),
          InstanceMethod<&Endpoint::Write>("write"),
          InstanceMethod<&Endpoint::Read>("read"),
          InstanceMethod<&Endpoint::Send>("send"),
          InstanceMethod<&Endpoint::Recv>("recv"),
          InstanceMethod<&Endpoint::CompareSwap>("compareSwap"),
          InstanceMethod<&Endpoint::FetchAdd>("fetchAdd"),
          InstanceMethod<&Endpoint::Post>("post"),
          InstanceMethod<&Endpoint::Disconnect>("disconnect"),
          InstanceMethod<&Endpoint::Close>("close"),
      });
}

Napi::Object Endpoint::Wrap(Napi::Env env, std::shared_ptr<EndpointRes> res) {
  auto* holder = new std::shared_ptr<EndpointRes>(std::move(res));
  try {
    Napi::Object o = GetData(env)->endpointCtor.New({MakeToken(env, holder)});
    delete holder;
    return o;
  } catch (...) {
    delete holder;
    throw;
  }
}

Endpoint::Endpoint(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Endpoint>(info) {
  res_ = *static_cast<std::shared_ptr<EndpointRes>*>(TakeToken(info, "Endpoint"));
  res_->wrapper = this;
  if (!res_->pdObj.IsEmpty()) {
    pdObj_ = Napi::Persistent(res_->pdObj.Value());
    res_->pdObj.Reset();
  }
  info.This().As<Napi::Object>().TypeTag(&kEndpointTag);
}

Endpoint::~Endpoint() {
  if (!res_) return;
  res_->wrapper = nullptr;
  // Unreachable from JS and not connected (or teardown): nothing can use it.
  if (res_->reg->alive) res_->DestroyNow();
  else pdObj_.SuppressDestruct();
}

Napi::Value Endpoint::State(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), res_->StateName());
}

Napi::Value Endpoint::Pd(const Napi::CallbackInfo& info) {
  if (pdObj_.IsEmpty()) {
    if (!res_->pd()) return info.Env().Null();
    pdObj_ = Napi::Persistent(ProtectionDomain::Wrap(info.Env(), res_->pd()));
  }
  return pdObj_.Value();
}

Napi::Value Endpoint::LocalAddress(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), res_->localAddress);
}
Napi::Value Endpoint::RemoteAddress(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), res_->remoteAddress);
}
Napi::Value Endpoint::RemotePort(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), res_->remotePort);
}
Napi::Value Endpoint::PeerPrivateData(const Napi::CallbackInfo& info) {
  const auto& d = res_->peerPrivateData;
  if (d.empty()) return Napi::Buffer<uint8_t>::New(info.Env(), 0);
  return Napi::Buffer<uint8_t>::Copy(info.Env(), d.data(), d.size());
}
Napi::Value Endpoint::InFlight(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(res_->inflight()));
}
Napi::Value Endpoint::GetBusyPoll(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), res_->busyPoll);
}
void Endpoint::SetBusyPoll(const Napi::CallbackInfo& info, const Napi::Value& v) {
  if (!v.IsBoolean()) ThrowArgType(info.Env(), "busyPoll", "of type boolean", v);
  res_->busyPoll = v.As<Napi::Boolean>().Value();
}
Napi::Value Endpoint::GetSpinUs(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), res_->spinUs);
}
void Endpoint::SetSpinUs(const Napi::CallbackInfo& info, const Napi::Value& v) {
  res_->spinUs = static_cast<uint32_t>(ToInteger(info.Env(), v, "spinUs", 0, kMaxSpinUs));
}
// The listener is kept as a private (symbol-keyed) property of this object,
// not by a native strong reference: a closure over the endpoint then forms a
// cycle the GC can collect once the endpoint is no longer pinned (connected,
// closing or with work in flight), and the finalizer frees the QP, CQ, id, PD.
Napi::Value Endpoint::GetOnEvent(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (res_->state() == EndpointRes::State::Closed) return env.Null();
  Napi::Value fn = info.This().As<Napi::Object>().Get(OnEventKey(env));
  return fn.IsFunction() ? fn : env.Null();
}
void Endpoint::SetOnEvent(const Napi::CallbackInfo& info, const Napi::Value& v) {
  Napi::Env env = info.Env();
  Napi::Object self = info.This().As<Napi::Object>();
  if (v.IsNull() || v.IsUndefined()) {
    self.Delete(OnEventKey(env));
    return;
  }
  if (!v.IsFunction()) ThrowArgType(env, "onEvent", "of type function or null", v);
  if (res_->state() == EndpointRes::State::Closed) return;  // nothing will be emitted
  self.Set(OnEventKey(env), v);
}
Napi::Value Endpoint::Capacity(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("maxSendWr", Napi::Number::New(env, res_->maxSend()));
  o.Set("maxRecvWr", Napi::Number::New(env, res_->maxRecv()));
  o.Set("cqe", Napi::Number::New(env, res_->cqe()));
  o.Set("queued", Napi::Number::New(env, static_cast<double>(res_->queued())));
  return o;
}

// The local buffer must be usable on this endpoint's QP: an MR of another PD,
// or a READ/RECV/atomic target without LOCAL_WRITE, would fail on the QP and put
// the connection in the error state. Refuse it here, before anything is posted.
// After every argument was read (user getters and valueOf may run JS, which
// may close an MR already checked): no work request may name a closed MR.
static void RecheckOpen(Napi::Env env, const std::vector<WrSpec>& specs) {
  for (const WrSpec& s : specs)
    if (s.mr->closed) ThrowNpmu(env, "ERR_NPMU_CLOSED", "memory region is closed");
}

static void CheckLocalMr(Napi::Env env, const EndpointRes& ep, const WrSpec& s, const std::string& name) {
  if (ep.pd() && s.mr->pd != ep.pd())
    ThrowArgValue(env, name + "mr", "must be registered on this endpoint's protection domain", s.mrObj);
  bool writesLocal = s.op == Op::Read || s.op == Op::Recv || s.op == Op::Cas || s.op == Op::Faa;
  if (writesLocal && !(s.mr->access & IBV_ACCESS_LOCAL_WRITE))
    ThrowArgValue(env, name + "mr", "needs Access.LOCAL_WRITE to receive data", s.mrObj);
}

Napi::Value Endpoint::PostOne(Napi::Env env, WrSpec spec, Batch::Kind kind) {
  CheckLocalMr(env, *res_, spec, "");
  if (spec.mr->closed) ThrowNpmu(env, "ERR_NPMU_CLOSED", "memory region is closed");
  auto batch = std::make_shared<Batch>(env, kind, 1);
  Napi::Promise p = batch->deferred.Promise();
  if (!res_->connected()) {
    Result r;
    r.failure = Failure::Npmu("ERR_NPMU_ENDPOINT_STATE",
                              std::string("endpoint is ") + res_->StateName() + ", not connected");
    batch->Complete(env, 0, r);
    return p;
  }
  std::vector<WrSpec> specs{std::move(spec)};
  std::shared_ptr<EndpointRes> keep = res_;
  keep->Post(env, specs, {0}, batch, true);
  return p;
}

Napi::Value Endpoint::Write(const Napi::CallbackInfo& info) {
  WrSpec s;
  s.op = Op::Write;
  CheckSlice(info.Env(), s, info[0], info[1], info[2], "");
  CheckRemote(info.Env(), s, info[3], info[4], "");
  return PostOne(info.Env(), std::move(s), Batch::Kind::Void);
}

Napi::Value Endpoint::Read(const Napi::CallbackInfo& info) {
  WrSpec s;
  s.op = Op::Read;
  CheckSlice(info.Env(), s, info[0], info[1], info[2], "");
  CheckRemote(info.Env(), s, info[3], info[4], "");
  return PostOne(info.Env(), std::move(s), Batch::Kind::Void);
}

Napi::Value Endpoint::Send(const Napi::CallbackInfo& info) {
  WrSpec s;
  s.op = Op::Send;
  CheckSlice(info.Env(), s, info[0], info[1], info[2], "");
  return PostOne(info.Env(), std::move(s), Batch::Kind::Void);
}

Napi::Value Endpoint::Recv(const Napi::CallbackInfo& info) {
  WrSpec s;
  s.op = Op::Recv;
  CheckSlice(info.Env(), s, info[0], info[1], info[2], "");
  return PostOne(info.Env(), std::move(s), Batch::Kind::Number);
}

Napi::Value Endpoint::CompareSwap(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  WrSpec s;
  s.op = Op::Cas;
  CheckSlice(env, s, info[0], info[1], env.Undefined(), "");
  CheckRemote(env, s, info[2], info[3], "");
  s.compare = ToU64OrNegative(env, info[4], "compare");
  s.swap = ToU64OrNegative(env, info[5], "swap");
  return PostOne(env, std::move(s), Batch::Kind::Value);
}

Napi::Value Endpoint::FetchAdd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  WrSpec s;
  s.op = Op::Faa;
  CheckSlice(env, s, info[0], info[1], env.Undefined(), "");
  CheckRemote(env, s, info[2], info[3], "");
  s.compare = ToU64OrNegative(env, info[4], "add");
  return PostOne(env, std::move(s), Batch::Kind::Value);
}

Napi::Value Endpoint::Post(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsArray()) ThrowArgType(env, "wrs", "an instance of Array", info[0]);
  Napi::Array arr = info[0].As<Napi::Array>();
  uint32_t n = arr.Length();
  if (n > 65536) ThrowOutOfRange(env, "wrs.length", "<= 65536", Napi::Number::New(env, n));
  std::vector<WrSpec> specs;
  std::vector<size_t> slots;
  specs.reserve(n);
  for (uint32_t i = 0; i < n; i++) {
    std::string name = "wrs[" + std::to_string(i) + "]";
    specs.push_back(ParseWorkRequest(env, arr.Get(i), name));
    CheckLocalMr(env, *res_, specs.back(), name + ".");
    slots.push_back(i);
  }
  RecheckOpen(env, specs);
  auto batch = std::make_shared<Batch>(env, Batch::Kind::Results, n);
  Napi::Promise p = batch->deferred.Promise();
  if (!res_->connected()) {
    batch->deferred.Reject(MakeError(env, Failure::Npmu("ERR_NPMU_ENDPOINT_STATE",
                                                         std::string("endpoint is ") + res_->StateName() +
                                                             ", not connected"))
                               .Value());
    batch->settled = true;
    return p;
  }
  if (n == 0) {
    batch->Settle(env);
    return p;
  }
  std::shared_ptr<EndpointRes> keep = res_;
  keep->Post(env, specs, slots, batch, true);
  return p;
}

Napi::Value Endpoint::Disconnect(const Napi::CallbackInfo& info) {
  res_->Disconnect();
  return info.Env().Undefined();
}

Napi::Value Endpoint::Close(const Napi::CallbackInfo& info) {
  std::shared_ptr<EndpointRes> keep = res_;
  return keep->Close(info.Env());
}

// ---- module functions ------------------------------------------------------------------

Napi::Value Connect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsObject()) ThrowArgType(env, "opts", "of type object", info[0]);
  Napi::Object opts = info[0].As<Napi::Object>();
  std::string host = ToStringArg(env, Prop(opts, "host"), "opts.host");
  int port = static_cast<int>(ToInteger(env, Prop(opts, "port"), "opts.port", 1, 65535));
  Napi::Value pdV = Prop(opts, "privateData");
  std::vector<uint8_t> privateData;
  if (!pdV.IsUndefined()) privateData = ToBytes(env, pdV, "opts.privateData", kMaxConnectPrivateData);
  uint32_t timeoutMs =
      static_cast<uint32_t>(OptInteger(env, Prop(opts, "timeoutMs"), "opts.timeoutMs", 1, 0x7fffffff, 5000));
  EndpointOptions eo = ParseEndpointOptions(env, opts, "opts.");

  auto reject = [&](const Failure& f) {
    auto d = Napi::Promise::Deferred::New(env);
    d.Reject(MakeError(env, f).Value());
    return d.Promise();
  };
  sockaddr_storage ss;
  Failure f;
  if (!ParseAddress(host, port, &ss, &f)) return reject(f);
  Napi::Object pdObj = eo.pdObj;
  auto ep = EndpointRes::Create(GetData(env)->reg, eo, &f);
  if (!ep) return reject(f);
  if (!pdObj.IsEmpty()) ep->pdObj = Napi::Persistent(pdObj);
  return ep->StartConnect(env, reinterpret_cast<sockaddr*>(&ss), timeoutMs, std::move(privateData));
}

Napi::Value PostAll(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsArray()) ThrowArgType(env, "items", "an instance of Array", info[0]);
  Napi::Array arr = info[0].As<Napi::Array>();
  uint32_t n = arr.Length();
  if (n > 65536) ThrowOutOfRange(env, "items.length", "<= 65536", Napi::Number::New(env, n));
  struct Group {
    std::shared_ptr<EndpointRes> ep;
    std::vector<WrSpec> specs;
    std::vector<size_t> slots;
    std::shared_ptr<size_t> pending;
  };
  std::vector<Group> groups;
  std::map<EndpointRes*, size_t> index;
  for (uint32_t i = 0; i < n; i++) {
    std::string name = "items[" + std::to_string(i) + "]";
    Napi::Value item = arr.Get(i);
    if (!item.IsObject()) ThrowArgType(env, name, "of type object", item);
    Endpoint* ep = UnwrapTagged<Endpoint>(env, Prop(item.As<Napi::Object>(), "ep"), kEndpointTag, name + ".ep",
                                          "Endpoint");
    WrSpec s = ParseWorkRequest(env, item, name);
    CheckLocalMr(env, *ep->res(), s, name + ".");
    auto it = index.find(ep->res().get());
    if (it == index.end()) {
      it = index.emplace(ep->res().get(), groups.size()).first;
      groups.push_back(Group{ep->res(), {}, {}, nullptr});
    }
    groups[it->second].specs.push_back(std::move(s));
    groups[it->second].slots.push_back(i);
  }
  for (const Group& g : groups) RecheckOpen(env, g.specs);
  auto batch = std::make_shared<Batch>(env, Batch::Kind::Results, n);
  Napi::Promise p = batch->deferred.Promise();
  if (n == 0) {
    batch->Settle(env);
    return p;
  }
  // Post every group before waiting on any (a mirrored write reaches both halves at once).
  for (Group& g : groups) {
    if (!g.ep->connected()) {
      for (size_t slot : g.slots) {
        Result r;
        r.failure = Failure::Npmu("ERR_NPMU_ENDPOINT_STATE",
                                  std::string("endpoint is ") + g.ep->StateName() + ", not connected");
        batch->Complete(env, slot, r);
      }
      g.specs.clear();
      continue;
    }
    g.pending = g.ep->Post(env, g.specs, g.slots, batch, false);
  }
  // Busy-poll endpoints: spin on each until its own work requests are in;
  // event-mode ones: one poll, and arm the CQ if work is still out.
  for (Group& g : groups)
    if (g.pending) g.ep->Reap(env, g.pending);
  return p;
}

}  // namespace npmu
