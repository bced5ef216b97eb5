#include "util/uv_handle.h"

namespace npmu {

UvHandle::UvHandle(std::shared_ptr<Registry> reg, std::shared_ptr<void> owner,
                   std::function<void(int, int)> cb)
    : reg_(std::move(reg)), owner_(std::move(owner)), cb_(std::move(cb)) {}

UvHandle* UvHandle::Poll(std::shared_ptr<Registry> reg, std::shared_ptr<void> owner, int fd,
                         std::function<void(int, int)> cb) {
  UvHandle* h = new UvHandle(reg, std::move(owner), std::move(cb));
  int rc = uv_poll_init(reg->loop, &h->poll_, fd);
  if (rc != 0) {
    delete h;
    return nullptr;
  }
  h->handle_.data = h;
  reg->openHandles++;
  uv_poll_start(&h->poll_, UV_READABLE, OnPoll);
  return h;
}

UvHandle* UvHandle::Timer(std::shared_ptr<Registry> reg, std::shared_ptr<void> owner,
                          uint64_t timeoutMs, std::function<void(int, int)> cb) {
  UvHandle* h = new UvHandle(reg, std::move(owner), std::move(cb));
  uv_timer_init(reg->loop, &h->timer_);
  h->handle_.data = h;
  reg->openHandles++;
  // The loop's cached time is stale after JS blocked the loop (spawnSync, a long
  // synchronous call): refresh it, or the timer fires early.
  uv_update_time(h->timer_.loop);
  uv_timer_start(&h->timer_, OnTimer, timeoutMs, 0);
  return h;
}

void UvHandle::Ref(bool on) {
  if (closing_) return;
  if (on)
    uv_ref(&handle_);
  else
    uv_unref(&handle_);
}

void UvHandle::Close() {
  if (closing_) return;
  closing_ = true;
  uv_close(&handle_, OnClose);
}

void UvHandle::OnPoll(uv_poll_t* p, int status, int events) {
  UvHandle* h = static_cast<UvHandle*>(p->data);
  if (h->closing_) return;
  std::shared_ptr<void> keep = h->owner_;  // the callback may close the handle
  h->cb_(status, events);
}

void UvHandle::OnTimer(uv_timer_t* t) {
  UvHandle* h = static_cast<UvHandle*>(t->data);
  if (h->closing_) return;
  std::shared_ptr<void> keep = h->owner_;
  h->cb_(0, 0);
}

void UvHandle::OnClose(uv_handle_t* hh) {
  UvHandle* h = static_cast<UvHandle*>(hh->data);
  std::shared_ptr<Registry> reg = h->reg_;
  // Dropping cb_ and owner_ may destroy the owner: it must not touch JS here.
  delete h;
  reg->HandleClosed();
}

}  // namespace npmu
