/*
 * peer.c: the C floor of npmu's mirrored write (issue 8, "Data-path speed").
 * It posts exactly the verbs npmu's durable mirrored write posts on a platform
 * whose CPU caches are persistent (eADR, persistence domain cpu_cache), with
 * nothing else around them, so bench/verbs.ts and the client can be compared
 * with it.
 *
 * One process, one RDMA device:
 * - a server on a pthread listens (rdma_cm) and accepts TWO connections, each
 *   with its own target buffer registered LOCAL_WRITE|REMOTE_WRITE|REMOTE_READ
 *   (anonymous memory, or with -f two files / devdax devices mapped MAP_SHARED,
 *   like the two units of a mirrored region);
 * - the client (main thread) has two connected RC QPs, A and B, each with its
 *   own send CQ, busy-polled (ibv_poll_cq in a loop, no completion channel).
 *
 * Per iteration (latency ops), with t = clock_gettime(CLOCK_MONOTONIC) before
 * the first post and after the last completion:
 *   mirror-durable  on A: RDMA WRITE of SIZE bytes (signaled; IBV_SEND_INLINE if
 *                   SIZE <= INLINE) chained to an RDMA READ of the last 8 bytes
 *                   written (signaled), one ibv_post_send; the same on B; then
 *                   poll both CQs until all 4 completions are in. The READ's
 *                   completion proves the WRITE was placed in the target
 *                   (read-after-write); on eADR a placed byte is durable.
 *   mirror          WRITE on A, WRITE on B (both signaled), 2 completions.
 *   single-durable  WRITE + 8-byte READ on A only, 2 completions.
 *   read            one signaled RDMA READ of SIZE bytes on A (the floor of
 *                   npmu's readRegion), 1 completion.
 * and prints one JSON line per (op, size), like lat.c:
 *   {"impl":"c-peer","op":"mirror-durable","size":64,"n":2000,"p50_us":..,"p99_us":..,"avg_us":..,...}
 * Latency ops write at offset 0 of the targets. Percentiles are nearest-rank
 * (sorted[ceil(p/100*n)-1]), as in lat.c and bench/verbs.ts.
 *
 * Pipelined bandwidth (op mirror-durable-bw): the same mirror-durable
 * operation (4 WRs, 4 completions) with DEPTH operations in flight. Operation
 * k writes at offset (k * SIZE) modulo the target, from its own slot of the
 * local buffer; a new operation is posted as soon as one completes. WARMUP
 * operations, then N timed ones; prints
 *   {"impl":"c-peer","op":"mirror-durable-bw","size":4096,"depth":8,"n":..,
 *    "ops_per_s":..,"MBps":..,"MiBps":..,"p50_us":..,"p99_us":..,...}
 * where MBps is 10^6 bytes/s of ONE half's payload (the client's write rate;
 * the wire carries twice that), MiBps the same in 2^20 bytes/s (perftest's
 * "MB/sec" unit), and p50/p99 the latency of one operation, post to its 4th
 * completion. Each operation holds 2 send-queue slots and 2 CQ entries on each
 * QP, so the depth is capped at min(max_send_wr, cqe) / 2 as read back from the
 * created QP and CQ (rxe rounds them up); a capped depth is reported with
 * "depth_requested".
 *
 * Self-check (not timed): before each run the last 8 bytes of every write
 * source get a fresh stamp; after it, the targets (the server's mappings, in
 * this process) and the READs' destinations must hold it, or peer fails.
 *
 * -F atomic: the fence after each WRITE is an 8-byte ATOMIC FETCH_AND_ADD of 0
 * to a word no write touches (the target's last 8 bytes), not a READ: on a
 * reliable connection its response, too, comes only after the responder
 * executed the WRITE before it; rxe runs it inline where it defers a READ
 * request to a tasklet (see docs/perf-read.md). What npmu's durable write
 * posts when its unit offers a fence word. Ops are then named *-faa.
 *
 * RDMA READ credits: initiator_depth / responder_resources are 16 (capped by
 * the device), as the addon asks by default.
 *
 * usage: peer [-a ADDR] [-n N] [-w WARMUP] [-s SIZES] [-o OPS] [-d DEPTHS]
 *             [-S BWSIZES] [-f PATH1,PATH2] [-m BYTES] [-i INLINE]
 *   ADDR     IPv4 address of the RDMA device (default $NPMU_RXE_ADDR)
 *   SIZES    sizes of the latency ops (default 64,4096)
 *   OPS      comma list of mirror-durable,mirror,single-durable,read,
 *            mirror-durable-bw (default: all)
 *   DEPTHS   operations in flight for mirror-durable-bw (default 1,8,32)
 *   BWSIZES  sizes of mirror-durable-bw (default 4096,65536)
 *   PATHS    two files or devdax devices (/dev/dax0.0,/dev/dax1.0) mapped as
 *            the two targets instead of anonymous memory; a regular file
 *            shorter than BYTES is extended (created if missing)
 *   BYTES    size of each target (default 64 MiB; a multiple of 4096)
 *   INLINE   largest WRITE sent inline (default 64, the addon's maxInline; 0: none)
 * env NPMU_BENCH_ITERS / NPMU_BENCH_WARMUP give defaults for -n / -w.
 * Exit status 0 on success; 1 on a failure or a bad argument (message on
 * stderr); 2 on an unknown option.
 *
 * build: cc -O2 -Wall -Wextra -o peer peer.c -lrdmacm -libverbs -lpthread
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netdb.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include <infiniband/verbs.h>
#include <rdma/rdma_cma.h>
#include <rdma/rdma_verbs.h>

#define MAX_LIST 16
#define RD_ATOM 16
#define READ_LEN 8

static void die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("peer: ", stderr);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  exit(1);
}

static void die_errno(const char *what) { die("%s: %s", what, strerror(errno)); }

/* ---- targets (the two "units") ------------------------------------------ */

struct target {
  const char *path; /* NULL: anonymous */
  const char *kind; /* "anon", "file", "devdax" */
  void *base;
  size_t len;
};

static void map_target(struct target *t, const char *path, size_t len) {
  t->path = path;
  t->len = len;
  if (!path) {
    t->kind = "anon";
    t->base = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (t->base == MAP_FAILED) die_errno("mmap (anonymous target)");
    memset(t->base, 0xab, len);
    return;
  }
  int fd = open(path, O_RDWR | O_CREAT, 0600);
  if (fd < 0) die("open %s: %s", path, strerror(errno));
  struct stat st;
  if (fstat(fd, &st)) die("fstat %s: %s", path, strerror(errno));
  if (S_ISCHR(st.st_mode)) {
    t->kind = "devdax";
  } else if (S_ISREG(st.st_mode)) {
    t->kind = "file";
    if ((size_t)st.st_size < len && ftruncate(fd, (off_t)len)) die("ftruncate %s: %s", path, strerror(errno));
  } else {
    die("%s is neither a regular file nor a character (devdax) device", path);
  }
  t->base = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (t->base == MAP_FAILED) die("mmap %zu bytes of %s (MAP_SHARED): %s", len, path, strerror(errno));
  close(fd);
}

/* ---- server side ---------------------------------------------------------- */

static struct {
  pthread_mutex_t m;
  pthread_cond_t c;
  int ready[2];
  int done;
  uint64_t addr[2];
  uint32_t rkey[2];
} shared = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, {0, 0}, 0, {0, 0}, {0, 0}};

static struct rdma_cm_id *listen_id;
static struct target targets[2];

static uint8_t min3(int a, int b, int c) {
  int m = a < b ? a : b;
  m = m < c ? m : c;
  return (uint8_t)(m < 0 ? 0 : m);
}

static void *server_main(void *arg) {
  (void)arg;
  struct rdma_cm_id *ids[2] = {NULL, NULL};
  struct ibv_mr *mrs[2] = {NULL, NULL};
  for (int k = 0; k < 2; k++) {
    struct rdma_cm_id *id;
    if (rdma_get_request(listen_id, &id)) die_errno("rdma_get_request");
    /* The client names the half it wants in one byte of private data. */
    const struct rdma_conn_param *req = &id->event->param.conn;
    if (req->private_data_len < 1) die("connection request without a half number");
    int half = ((const uint8_t *)req->private_data)[0];
    if (half > 1 || ids[half]) die("bad or repeated half %d in a connection request", half);
    uint8_t peer_init = req->initiator_depth, peer_resp = req->responder_resources;
    ids[half] = id;
    struct target *t = &targets[half];
    mrs[half] = ibv_reg_mr(id->pd, t->base, t->len,
                           IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ |
                               IBV_ACCESS_REMOTE_ATOMIC);
    if (!mrs[half]) die("server ibv_reg_mr of target %d (%s): %s", half, t->path ? t->path : "anonymous", strerror(errno));
    struct ibv_device_attr da;
    if (ibv_query_device(id->verbs, &da)) die("ibv_query_device failed");
    struct rdma_conn_param p;
    memset(&p, 0, sizeof p);
    p.responder_resources = min3(RD_ATOM, da.max_qp_rd_atom, peer_init);
    p.initiator_depth = min3(RD_ATOM, da.max_qp_init_rd_atom, peer_resp);
    p.retry_count = 7;
    p.rnr_retry_count = 7;
    /* Publish before accepting: rdma_connect returns only once established. */
    pthread_mutex_lock(&shared.m);
    shared.addr[half] = (uint64_t)(uintptr_t)t->base;
    shared.rkey[half] = mrs[half]->rkey;
    shared.ready[half] = 1;
    pthread_cond_broadcast(&shared.c);
    pthread_mutex_unlock(&shared.m);
    if (rdma_accept(id, &p)) die_errno("rdma_accept");
  }
  pthread_mutex_lock(&shared.m);
  while (!shared.done) pthread_cond_wait(&shared.c, &shared.m);
  pthread_mutex_unlock(&shared.m);
  for (int k = 0; k < 2; k++) {
    rdma_disconnect(ids[k]);
    ibv_dereg_mr(mrs[k]);
    rdma_destroy_ep(ids[k]);
  }
  return NULL;
}

/* ---- client side ---------------------------------------------------------- */

struct half {
  struct rdma_cm_id *id;
  struct ibv_mr *mr; /* local buffer: write sources, then READ destinations */
  char *buf;
  size_t src_len; /* bytes of write sources (slots of the largest size) */
  uint64_t raddr;
  uint32_t rkey;
  uint32_t max_send_wr; /* as created (read back) */
  int cqe;
  uint64_t next_wr_id; /* completions on one RC send queue come in post order */
};

static struct half H[2];
static uint32_t max_inline = 64;
/* -F atomic: the fence after each WRITE is an 8-byte ATOMIC FETCH_AND_ADD of 0
 * to a word no write touches (the target's last 8 bytes) instead of a READ;
 * ops are then named *-faa. */
static int fence_atomic = 0;
static size_t target_len = 64u << 20;

static double ts_us(const struct timespec *a, const struct timespec *b) {
  return (double)(b->tv_sec - a->tv_sec) * 1e6 + (double)(b->tv_nsec - a->tv_nsec) / 1e3;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* nearest rank: the smallest value with at least p% of the samples <= it */
static double percentile(const double *sorted, size_t n, double p) {
  double x = (p / 100.0) * (double)n;
  size_t rank = (size_t)x;
  if (x - (double)rank > 1e-9) rank++;
  if (rank < 1) rank = 1;
  if (rank > n) rank = n;
  return sorted[rank - 1];
}

/* WRITE of `size` bytes from local slot `slot` to remote offset `off`,
 * optionally chained to an 8-byte READ of its last 8 bytes into read slot `slot`. */
struct pair {
  struct ibv_sge wsge, rsge;
  struct ibv_send_wr w, r;
};

static void prep_pair(struct pair *p, struct half *h, uint32_t size, size_t slot, uint64_t off, int with_read) {
  memset(p, 0, sizeof *p);
  p->wsge.addr = (uint64_t)(uintptr_t)(h->buf + slot * size);
  p->wsge.length = size;
  p->wsge.lkey = h->mr->lkey;
  p->w.sg_list = &p->wsge;
  p->w.num_sge = 1;
  p->w.opcode = IBV_WR_RDMA_WRITE;
  p->w.send_flags = IBV_SEND_SIGNALED | (size <= max_inline ? IBV_SEND_INLINE : 0);
  p->w.wr.rdma.remote_addr = h->raddr + off;
  p->w.wr.rdma.rkey = h->rkey;
  p->w.wr_id = h->next_wr_id++;
  if (!with_read) return;
  p->rsge.addr = (uint64_t)(uintptr_t)(h->buf + h->src_len + slot * READ_LEN);
  p->rsge.length = READ_LEN;
  p->rsge.lkey = h->mr->lkey;
  p->r.sg_list = &p->rsge;
  p->r.num_sge = 1;
  p->r.send_flags = IBV_SEND_SIGNALED;
  if (fence_atomic) {
    p->r.opcode = IBV_WR_ATOMIC_FETCH_AND_ADD;
    p->r.wr.atomic.remote_addr = h->raddr + target_len - READ_LEN;
    p->r.wr.atomic.rkey = h->rkey;
    p->r.wr.atomic.compare_add = 0;
  } else {
    p->r.opcode = IBV_WR_RDMA_READ;
    p->r.wr.rdma.remote_addr = h->raddr + off + size - READ_LEN;
    p->r.wr.rdma.rkey = h->rkey;
  }
  p->r.wr_id = h->next_wr_id++;
  p->w.next = &p->r;
}

static void post(struct half *h, struct ibv_send_wr *first, const char *what) {
  struct ibv_send_wr *bad = NULL;
  int rc = ibv_post_send(h->id->qp, first, &bad);
  if (rc) die("%s: ibv_post_send: %s", what, strerror(rc));
}

/* Poll one CQ once; check and count what came. Returns completions seen. */
static int poll_half(struct half *h, struct ibv_wc *wc, int max, uint64_t *expect, const char *what) {
  int got = ibv_poll_cq(h->id->send_cq, max, wc);
  if (got < 0) die("%s: ibv_poll_cq failed", what);
  for (int i = 0; i < got; i++) {
    if (wc[i].status != IBV_WC_SUCCESS)
      die("%s: half %c: completion %s (opcode %d)", what, h == &H[0] ? 'A' : 'B', ibv_wc_status_str(wc[i].status),
          (int)wc[i].opcode);
    if (wc[i].wr_id != *expect)
      die("%s: half %c: wr_id %" PRIu64 " where %" PRIu64 " was due", what, h == &H[0] ? 'A' : 'B', wc[i].wr_id, *expect);
    ++*expect;
  }
  return got;
}

/* Self-check, outside the timed region: before a run the last 8 bytes of each
 * write source get a fresh stamp; after it, the target (the server's mapping,
 * in this process) and the READ's destination must hold that stamp. */
static uint64_t stamp_seq = 0x6e706d7500000000ull;

static void stamp(struct half *h, uint32_t size, size_t slot, uint64_t v) {
  memcpy(h->buf + slot * size + size - READ_LEN, &v, READ_LEN);
}

static void verify(int k, uint32_t size, size_t slot, uint64_t off, uint64_t v, int with_read, const char *what) {
  if (memcmp((char *)targets[k].base + off + size - READ_LEN, &v, READ_LEN))
    die("%s %u: the last bytes written are not in target %c", what, size, 'A' + k);
  if (with_read && !fence_atomic && memcmp(H[k].buf + H[k].src_len + slot * READ_LEN, &v, READ_LEN))
    die("%s %u: the READ on %c did not return the bytes written", what, size, 'A' + k);
}

enum op { OP_MIRROR_DURABLE, OP_MIRROR, OP_SINGLE_DURABLE, OP_READ, OP_BW };
static const char *const OP_NAMES[] = {"mirror-durable", "mirror", "single-durable", "read", "mirror-durable-bw"};
static const char *const FAA_NAMES[] = {"mirror-durable-faa", "mirror", "single-durable-faa", "read", "mirror-durable-faa-bw"};
static const char *op_name(enum op op) { return fence_atomic ? FAA_NAMES[op] : OP_NAMES[op]; }

static void print_stats(const char *op, uint32_t size, size_t n, size_t warmup, double *samples) {
  double sum = 0;
  for (size_t i = 0; i < n; i++) sum += samples[i];
  qsort(samples, n, sizeof *samples, cmp_double);
  printf("\"n\":%zu,\"warmup\":%zu,\"p50_us\":%.3f,\"p99_us\":%.3f,\"avg_us\":%.3f,\"min_us\":%.3f,\"max_us\":%.3f",
         n, warmup, percentile(samples, n, 50), percentile(samples, n, 99), sum / (double)n, samples[0],
         samples[n - 1]);
  (void)op;
  (void)size;
}

static void run_latency(enum op op, uint32_t size, size_t warmup, size_t n, double *samples) {
  const char *name = op_name(op);
  int use_b = op == OP_MIRROR_DURABLE || op == OP_MIRROR;
  int with_read = op == OP_MIRROR_DURABLE || op == OP_SINGLE_DURABLE;
  if (with_read && size < READ_LEN) die("%s needs a size of at least %d bytes", name, READ_LEN);
  uint64_t expect[2] = {H[0].next_wr_id, H[1].next_wr_id};
  uint64_t v = ++stamp_seq;
  if (op != OP_READ)
    for (int k = 0; k < (use_b ? 2 : 1); k++) stamp(&H[k], size, 0, v);
  struct ibv_wc wc[4];
  for (size_t i = 0; i < warmup + n; i++) {
    struct pair pa, pb;
    struct ibv_sge rsge;
    struct ibv_send_wr rd;
    int want_a, want_b = 0;
    if (op == OP_READ) {
      memset(&rd, 0, sizeof rd);
      rsge.addr = (uint64_t)(uintptr_t)H[0].buf;
      rsge.length = size;
      rsge.lkey = H[0].mr->lkey;
      rd.sg_list = &rsge;
      rd.num_sge = 1;
      rd.opcode = IBV_WR_RDMA_READ;
      rd.send_flags = IBV_SEND_SIGNALED;
      rd.wr.rdma.remote_addr = H[0].raddr;
      rd.wr.rdma.rkey = H[0].rkey;
      rd.wr_id = H[0].next_wr_id++;
      want_a = 1;
    } else {
      prep_pair(&pa, &H[0], size, 0, 0, with_read);
      want_a = with_read ? 2 : 1;
      if (use_b) {
        prep_pair(&pb, &H[1], size, 0, 0, with_read);
        want_b = want_a;
      }
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    post(&H[0], op == OP_READ ? &rd : &pa.w, name);
    if (use_b) post(&H[1], &pb.w, name);
    int got_a = 0, got_b = 0;
    while (got_a < want_a || got_b < want_b) {
      if (got_a < want_a) got_a += poll_half(&H[0], wc, 4, &expect[0], name);
      if (got_b < want_b) got_b += poll_half(&H[1], wc, 4, &expect[1], name);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (i >= warmup) samples[i - warmup] = ts_us(&t0, &t1);
  }
  if (op != OP_READ)
    for (int k = 0; k < (use_b ? 2 : 1); k++) verify(k, size, 0, 0, v, with_read, name);
  printf("{\"impl\":\"c-peer\",\"op\":\"%s\",\"size\":%u,", name, size);
  print_stats(name, size, n, warmup, samples);
  printf(",\"inline\":%s,\"target\":\"%s\"}\n", op != OP_READ && size <= max_inline ? "true" : "false", targets[0].kind);
  fflush(stdout);
}

/* mirror-durable with `depth` operations in flight. */
static void run_bw(uint32_t size, unsigned depth_req, size_t warmup, size_t n, double *samples) {
  const char *name = op_name(OP_BW);
  if (size < READ_LEN) die("%s needs a size of at least %d bytes", name, READ_LEN);
  if (size > target_len) die("%s: size %u exceeds the target (%zu bytes)", name, size, target_len);
  /* Each operation holds 2 send-queue slots and 2 CQ entries per QP. */
  unsigned cap = UINT32_MAX;
  for (int k = 0; k < 2; k++) {
    unsigned c = H[k].max_send_wr < (unsigned)H[k].cqe ? H[k].max_send_wr : (unsigned)H[k].cqe;
    if (c / 2 < cap) cap = c / 2;
  }
  unsigned depth = depth_req < cap ? depth_req : cap;
  if (depth < 1) die("%s: the send queue holds no operation", name);
  if (depth < depth_req)
    fprintf(stderr, "peer: %s depth %u capped to %u (max_send_wr %u, cqe %d)\n", name, depth_req, depth,
            H[0].max_send_wr, H[0].cqe);
  if ((size_t)depth * size > H[0].src_len) die("%s: %u x %u B exceeds the local buffer", name, depth, size);
  size_t nslots_remote = target_len / size;
  size_t total = warmup + n;
  struct timespec *t_post = malloc(depth * sizeof *t_post);
  int *left = malloc(depth * sizeof *left);
  struct pair *pairs = malloc(2 * depth * sizeof *pairs); /* must live until posted */
  if (!t_post || !left || !pairs) die("out of memory");
  uint64_t expect[2] = {H[0].next_wr_id, H[1].next_wr_id};
  /* op k's wr_ids on half h are base[h] + 2k (WRITE) and base[h] + 2k + 1 (READ) */
  uint64_t base[2] = {H[0].next_wr_id, H[1].next_wr_id};
  uint64_t v0 = stamp_seq + 1;
  stamp_seq += depth;
  for (int k = 0; k < 2; k++)
    for (unsigned j = 0; j < depth; j++) stamp(&H[k], size, j, v0 + j);
  size_t posted = 0, done = 0;
  struct timespec t_begin = {0, 0}, t_end = {0, 0};
  struct ibv_wc wc[32];
  while (done < total) {
    while (posted < total && posted - done < depth) {
      size_t slot = posted % depth;
      uint64_t off = (uint64_t)(posted % nslots_remote) * size;
      for (int k = 0; k < 2; k++) prep_pair(&pairs[2 * slot + k], &H[k], size, slot, off, 1);
      left[slot] = 4;
      clock_gettime(CLOCK_MONOTONIC, &t_post[slot]);
      if (posted == warmup) t_begin = t_post[slot];
      post(&H[0], &pairs[2 * slot].w, name);
      post(&H[1], &pairs[2 * slot + 1].w, name);
      posted++;
    }
    for (int k = 0; k < 2; k++) {
      uint64_t first = expect[k];
      int got = poll_half(&H[k], wc, 32, &expect[k], name);
      for (int j = 0; j < got; j++) {
        size_t opno = (size_t)((first + (uint64_t)j - base[k]) / 2);
        size_t slot = opno % depth;
        if (--left[slot] == 0) {
          /* ops finish in post order: both queues complete in order */
          if (opno != done) die("%s: operation %zu finished before %zu", name, opno, done);
          struct timespec t;
          clock_gettime(CLOCK_MONOTONIC, &t);
          if (opno >= warmup) samples[opno - warmup] = ts_us(&t_post[slot], &t);
          done++;
          if (done == total) t_end = t;
        }
      }
    }
  }
  size_t last = total - 1;
  for (int k = 0; k < 2; k++)
    verify(k, size, last % depth, (uint64_t)(last % nslots_remote) * size, v0 + last % depth, 1, name);
  double secs = ts_us(&t_begin, &t_end) / 1e6;
  double ops = (double)n / secs, bytes = (double)n * size / secs;
  printf("{\"impl\":\"c-peer\",\"op\":\"%s\",\"size\":%u,\"depth\":%u,", name, size, depth);
  if (depth != depth_req) printf("\"depth_requested\":%u,", depth_req);
  printf("\"ops_per_s\":%.1f,\"MBps\":%.2f,\"MiBps\":%.2f,\"seconds\":%.3f,", ops, bytes / 1e6, bytes / 1048576.0, secs);
  print_stats(name, size, n, warmup, samples);
  printf(",\"inline\":%s,\"target\":\"%s\"}\n", size <= max_inline ? "true" : "false", targets[0].kind);
  fflush(stdout);
  free(t_post);
  free(left);
  free(pairs);
}

/* ---- options -------------------------------------------------------------- */

static size_t env_size(const char *name, size_t dflt) {
  const char *v = getenv(name);
  if (!v || !*v) return dflt;
  char *end;
  unsigned long long x = strtoull(v, &end, 10);
  if (*end) die("%s=%s is not a number", name, v);
  return (size_t)x;
}

static size_t parse_count(const char *opt, const char *v) {
  char *end;
  errno = 0;
  unsigned long long x = strtoull(v, &end, 10);
  if (errno || end == v || *end) die("%s %s: not a number", opt, v);
  return (size_t)x;
}

static size_t parse_list(const char *opt, char *arg, uint32_t *out, unsigned long min, unsigned long max) {
  size_t k = 0;
  for (char *s = strtok(arg, ","); s; s = strtok(NULL, ",")) {
    if (k == MAX_LIST) die("%s: too many values", opt);
    size_t v = parse_count(opt, s);
    if (v < min || v > max) die("%s: %s out of range (%lu..%lu)", opt, s, min, max);
    out[k++] = (uint32_t)v;
  }
  if (!k) die("%s: empty list", opt);
  return k;
}

static void usage(FILE *f, const char *argv0) {
  fprintf(f,
          "usage: %s [-a ADDR] [-n N] [-w WARMUP] [-s 64,4096] [-o OPS] [-d 1,8,32] [-S 4096,65536]\n"
          "          [-f PATH1,PATH2] [-m BYTES] [-i INLINE] [-F read|atomic]\n"
          "  OPS: mirror-durable,mirror,single-durable,read,mirror-durable-bw (default: all)\n",
          argv0);
}

int main(int argc, char **argv) {
  const char *addr = getenv("NPMU_RXE_ADDR");
  size_t n = env_size("NPMU_BENCH_ITERS", 2000), warmup = env_size("NPMU_BENCH_WARMUP", 100);
  char sizes_arg[256] = "64,4096", bw_sizes_arg[256] = "4096,65536", depths_arg[256] = "1,8,32";
  char ops_arg[256] = "mirror-durable,mirror,single-durable,read,mirror-durable-bw";
  char *paths_arg = NULL;
  int c;
  while ((c = getopt(argc, argv, "a:n:w:s:o:d:S:f:m:i:F:h")) != -1) {
    switch (c) {
      case 'a': addr = optarg; break;
      case 'n': n = parse_count("-n", optarg); break;
      case 'w': warmup = parse_count("-w", optarg); break;
      case 's': snprintf(sizes_arg, sizeof sizes_arg, "%s", optarg); break;
      case 'S': snprintf(bw_sizes_arg, sizeof bw_sizes_arg, "%s", optarg); break;
      case 'o': snprintf(ops_arg, sizeof ops_arg, "%s", optarg); break;
      case 'd': snprintf(depths_arg, sizeof depths_arg, "%s", optarg); break;
      case 'f': paths_arg = optarg; break;
      case 'm': target_len = parse_count("-m", optarg); break;
      case 'i': max_inline = (uint32_t)parse_count("-i", optarg); break;
      case 'F':
        if (!strcmp(optarg, "atomic")) fence_atomic = 1;
        else if (!strcmp(optarg, "read")) fence_atomic = 0;
        else die("-F: read or atomic, not %s", optarg);
        break;
      case 'h': usage(stdout, argv[0]); return 0;
      default: usage(stderr, argv[0]); return 2;
    }
  }
  if (optind < argc) {
    usage(stderr, argv[0]);
    return 2;
  }
  if (!addr || !*addr) die("no address: pass -a ADDR or set NPMU_RXE_ADDR");
  if (n < 1) die("-n must be at least 1");
  if (target_len < 4096 || target_len % 4096) die("-m %zu: must be a positive multiple of 4096", target_len);

  uint32_t sizes[MAX_LIST], bw_sizes[MAX_LIST], depths[MAX_LIST];
  size_t nsizes = parse_list("-s", sizes_arg, sizes, 1, target_len);
  size_t nbw = parse_list("-S", bw_sizes_arg, bw_sizes, READ_LEN, target_len);
  size_t ndepths = parse_list("-d", depths_arg, depths, 1, 4096);
  int want[5] = {0, 0, 0, 0, 0};
  for (char *s = strtok(ops_arg, ","); s; s = strtok(NULL, ",")) {
    int found = 0;
    for (int o = 0; o < 5; o++)
      if (!strcmp(s, OP_NAMES[o])) want[o] = found = 1;
    if (!found) die("bad op %s (mirror-durable, mirror, single-durable, read, mirror-durable-bw)", s);
  }
  uint32_t max_size = 0, max_depth = 1, max_bw_size = 0;
  for (size_t i = 0; i < nsizes; i++) max_size = sizes[i] > max_size ? sizes[i] : max_size;
  if (want[OP_BW]) {
    for (size_t i = 0; i < ndepths; i++) max_depth = depths[i] > max_depth ? depths[i] : max_depth;
    for (size_t i = 0; i < nbw; i++) max_bw_size = bw_sizes[i] > max_bw_size ? bw_sizes[i] : max_bw_size;
  }

  /* Targets. */
  const char *paths[2] = {NULL, NULL};
  if (paths_arg) {
    char *comma = strchr(paths_arg, ',');
    if (!comma || !comma[1] || comma == paths_arg || strchr(comma + 1, ','))
      die("-f needs two paths separated by a comma (e.g. /dev/dax0.0,/dev/dax1.0)");
    *comma = 0;
    paths[0] = paths_arg;
    paths[1] = comma + 1;
  }
  for (int k = 0; k < 2; k++) map_target(&targets[k], paths[k], target_len);

  /* QPs: each mirror-durable op holds 2 send WRs per QP. */
  struct rdma_addrinfo hints, *res;
  memset(&hints, 0, sizeof hints);
  hints.ai_flags = RAI_PASSIVE | RAI_NUMERICHOST;
  hints.ai_port_space = RDMA_PS_TCP;
  int rc = rdma_getaddrinfo(addr, "0", &hints, &res);
  if (rc) die("rdma_getaddrinfo(%s, passive): %s", addr, rc == -1 ? strerror(errno) : gai_strerror(rc));
  struct ibv_qp_init_attr attr;
  memset(&attr, 0, sizeof attr);
  attr.cap.max_send_wr = 2 * max_depth < 16 ? 16 : 2 * max_depth;
  attr.cap.max_recv_wr = 1;
  attr.cap.max_send_sge = 1;
  attr.cap.max_recv_sge = 1;
  attr.cap.max_inline_data = max_inline;
  attr.qp_type = IBV_QPT_RC;
  attr.sq_sig_all = 0;
  struct ibv_qp_init_attr sattr = attr;
  if (rdma_create_ep(&listen_id, res, NULL, &sattr)) die_errno("rdma_create_ep (listen)");
  rdma_freeaddrinfo(res);
  if (rdma_listen(listen_id, 2)) die_errno("rdma_listen");
  char port[16];
  snprintf(port, sizeof port, "%u", ntohs(rdma_get_src_port(listen_id)));

  pthread_t server;
  if ((rc = pthread_create(&server, NULL, server_main, NULL))) die("pthread_create: %s", strerror(rc));

  size_t src_len = (size_t)max_depth * (max_bw_size > max_size ? max_bw_size : max_size);
  for (int k = 0; k < 2; k++) {
    struct half *h = &H[k];
    memset(&hints, 0, sizeof hints);
    hints.ai_flags = RAI_NUMERICHOST;
    hints.ai_port_space = RDMA_PS_TCP;
    rc = rdma_getaddrinfo(addr, port, &hints, &res);
    if (rc) die("rdma_getaddrinfo(%s:%s): %s", addr, port, rc == -1 ? strerror(errno) : gai_strerror(rc));
    struct ibv_qp_init_attr cattr = attr;
    if (rdma_create_ep(&h->id, res, NULL, &cattr)) die_errno("rdma_create_ep (client)");
    rdma_freeaddrinfo(res);
    /* What the provider really gave (rxe rounds queue sizes up). */
    struct ibv_qp_attr qa;
    struct ibv_qp_init_attr qia;
    if (ibv_query_qp(h->id->qp, &qa, IBV_QP_CAP, &qia)) die("ibv_query_qp failed");
    h->max_send_wr = qia.cap.max_send_wr;
    if (qia.cap.max_inline_data < max_inline) {
      fprintf(stderr, "peer: the QP takes %u inline bytes, not %u\n", qia.cap.max_inline_data, max_inline);
      max_inline = qia.cap.max_inline_data;
    }
    h->cqe = h->id->send_cq->cqe;
    h->src_len = src_len;
    size_t len = src_len + (size_t)max_depth * READ_LEN;
    h->buf = aligned_alloc(4096, (len + 4095) / 4096 * 4096);
    if (!h->buf) die("out of memory");
    memset(h->buf, 0x5a + k, len);
    h->mr = ibv_reg_mr(h->id->pd, h->buf, len, IBV_ACCESS_LOCAL_WRITE);
    if (!h->mr) die_errno("client ibv_reg_mr");
    struct ibv_device_attr da;
    if (ibv_query_device(h->id->verbs, &da)) die("ibv_query_device failed");
    uint8_t which = (uint8_t)k;
    struct rdma_conn_param p;
    memset(&p, 0, sizeof p);
    p.private_data = &which;
    p.private_data_len = 1;
    p.responder_resources = min3(RD_ATOM, da.max_qp_rd_atom, RD_ATOM);
    p.initiator_depth = min3(RD_ATOM, da.max_qp_init_rd_atom, RD_ATOM);
    p.retry_count = 7;
    p.rnr_retry_count = 7;
    if (rdma_connect(h->id, &p)) die("rdma_connect (half %c): %s", 'A' + k, strerror(errno));
    pthread_mutex_lock(&shared.m);
    while (!shared.ready[k]) pthread_cond_wait(&shared.c, &shared.m);
    h->raddr = shared.addr[k];
    h->rkey = shared.rkey[k];
    pthread_mutex_unlock(&shared.m);
  }

  size_t max_n = n;
  double *samples = malloc(max_n * sizeof *samples);
  if (!samples) die("out of memory");
  for (int o = OP_MIRROR_DURABLE; o <= OP_READ; o++)
    if (want[o])
      for (size_t s = 0; s < nsizes; s++) run_latency((enum op)o, sizes[s], warmup, n, samples);
  if (want[OP_BW])
    for (size_t s = 0; s < nbw; s++)
      for (size_t d = 0; d < ndepths; d++) run_bw(bw_sizes[s], depths[d], warmup, n, samples);
  free(samples);

  /* Both ends disconnect at once (a synchronous rdma_disconnect waits for the peer). */
  pthread_mutex_lock(&shared.m);
  shared.done = 1;
  pthread_cond_broadcast(&shared.c);
  pthread_mutex_unlock(&shared.m);
  for (int k = 0; k < 2; k++) rdma_disconnect(H[k].id);
  pthread_join(server, NULL);
  for (int k = 0; k < 2; k++) {
    ibv_dereg_mr(H[k].mr);
    rdma_destroy_ep(H[k].id);
    free(H[k].buf);
  }
  rdma_destroy_ep(listen_id);
  for (int k = 0; k < 2; k++) munmap(targets[k].base, targets[k].len);
  return 0;
}
