/*
 * lat.c: the plain C baseline of the verbs benchmark (bench/verbs.ts is the same
 * measurement from Node through the addon).
 *
 * One process, two rdma_cm endpoints on the same RDMA device: a server on a
 * pthread registers a buffer with REMOTE_READ|REMOTE_WRITE and accepts; the
 * client (main thread) then, for each (op, size), runs WARMUP + N iterations of
 *   clock_gettime -> ibv_post_send(one signaled WR) -> busy ibv_poll_cq until
 *   its completion -> clock_gettime
 * and prints one JSON line:
 *   {"impl":"c-loop","op":"write","size":64,"n":2000,"p50_us":..,"p99_us":..,"avg_us":..,...}
 *
 * Percentiles are nearest-rank (sorted[ceil(p/100*n)-1]), as in bench/verbs.ts.
 * WRITEs of at most INLINE bytes are posted with IBV_SEND_INLINE, mirroring the
 * addon's default maxInline of 64.
 *
 * usage: lat [-a ADDR] [-n N] [-w WARMUP] [-s SIZES] [-o OPS] [-i INLINE] [-y N] [-t PAGES] [-c CPU] [-F]
 *   ADDR    IPv4 address of the RDMA device (default $NPMU_RXE_ADDR)
 *   SIZES   comma list of byte counts (default 64,4096)
 *   OPS     comma list of write,read (default write,read)
 *   INLINE  largest WRITE sent inline (default 64; 0: none)
 *   -y N    diagnostic: sched_yield() after every N empty polls (default 0:
 *           never), as a spinning poller that yields would
 *   -t N    diagnostic: after each completion, before the second clock read,
 *           touch N distinct 4 KiB pages (read+write one byte each), as a
 *           runtime with a large working set does work between the completion
 *           and the caller seeing it (default 0). See docs/perf-read.md
 *   -c CPU  pin the process (both threads) to CPU (default $NPMU_BENCH_CPU;
 *           unset or empty: not pinned)
 *   -F      run SCHED_FIFO priority 1 (default: $NPMU_BENCH_SCHED=fifo), so a
 *           ksoftirqd woken by rxe cannot preempt the poster (docs/perf-read.md)
 * env NPMU_BENCH_ITERS / NPMU_BENCH_WARMUP give defaults for -n / -w.
 *
 * build: cc -O2 -Wall -Wextra -o lat lat.c -lrdmacm -libverbs -lpthread
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <netdb.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>

#include <infiniband/verbs.h>
#include <rdma/rdma_cma.h>
#include <rdma/rdma_verbs.h>

#define MAX_SIZES 16
#define BUF_SIZE (1u << 20)

static void die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("lat: ", stderr);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  exit(1);
}

static void die_errno(const char *what) { die("%s: %s", what, strerror(errno)); }

/* What the server hands the client, and the client's "done" signal. */
static struct {
  pthread_mutex_t m;
  pthread_cond_t c;
  int ready; /* server MR published (or failed) */
  int failed;
  int done; /* client finished: server may disconnect */
  uint64_t addr;
  uint32_t rkey;
} shared = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0, 0, 0};

static struct rdma_cm_id *listen_id;
static int verbose;
static struct timespec t_start;

static void phase(const char *what) {
  if (!verbose) return;
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  fprintf(stderr, "lat: %8.3f s %s\n", (double)(t.tv_sec - t_start.tv_sec) + (double)(t.tv_nsec - t_start.tv_nsec) / 1e9, what);
}
static uint32_t max_inline = 64;
static unsigned yield_every; /* -y: sched_yield() every N empty polls (0: never) */
static size_t touch_pages;    /* -t: pages touched after each completion, inside the window */
static volatile unsigned char *touch_buf;

static void publish(int failed, uint64_t addr, uint32_t rkey) {
  pthread_mutex_lock(&shared.m);
  shared.failed = failed;
  shared.addr = addr;
  shared.rkey = rkey;
  shared.ready = 1;
  pthread_cond_broadcast(&shared.c);
  pthread_mutex_unlock(&shared.m);
}

static struct rdma_conn_param conn_param(void) {
  struct rdma_conn_param p;
  memset(&p, 0, sizeof p);
  p.responder_resources = 1; /* one RDMA READ outstanding at a time is all we do */
  p.initiator_depth = 1;
  p.retry_count = 7;
  p.rnr_retry_count = 7;
  return p;
}

static void *server_main(void *arg) {
  (void)arg;
  struct rdma_cm_id *id;
  if (rdma_get_request(listen_id, &id)) {
    perror("lat: rdma_get_request");
    publish(1, 0, 0);
    return NULL;
  }
  void *buf = aligned_alloc(4096, BUF_SIZE);
  if (!buf) {
    publish(1, 0, 0);
    return NULL;
  }
  memset(buf, 0xab, BUF_SIZE);
  struct ibv_mr *mr = ibv_reg_mr(id->pd, buf, BUF_SIZE,
                                 IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ);
  if (!mr) {
    perror("lat: server ibv_reg_mr");
    publish(1, 0, 0);
    return NULL;
  }
  struct rdma_conn_param p = conn_param();
  /* Publish before accepting: rdma_connect returns only once established. */
  publish(0, (uint64_t)(uintptr_t)buf, mr->rkey);
  if (rdma_accept(id, &p)) {
    perror("lat: rdma_accept");
    pthread_mutex_lock(&shared.m);
    shared.failed = 1;
    pthread_mutex_unlock(&shared.m);
    return NULL;
  }
  pthread_mutex_lock(&shared.m);
  while (!shared.done) pthread_cond_wait(&shared.c, &shared.m);
  pthread_mutex_unlock(&shared.m);
  rdma_disconnect(id);
  ibv_dereg_mr(mr);
  rdma_destroy_ep(id);
  free(buf);
  return NULL;
}

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
  if (x - (double)rank > 1e-9) rank++; /* ceil, tolerant of rounding error */
  if (rank < 1) rank = 1;
  if (rank > n) rank = n;
  return sorted[rank - 1];
}

static void run(struct rdma_cm_id *id, struct ibv_mr *mr, const char *op, uint32_t size, size_t warmup, size_t n,
                double *samples) {
  int is_write = strcmp(op, "write") == 0;
  struct ibv_sge sge = {.addr = (uint64_t)(uintptr_t)mr->addr, .length = size, .lkey = mr->lkey};
  struct ibv_send_wr wr, *bad;
  struct ibv_wc wc;
  memset(&wr, 0, sizeof wr);
  wr.sg_list = &sge;
  wr.num_sge = 1;
  wr.opcode = is_write ? IBV_WR_RDMA_WRITE : IBV_WR_RDMA_READ;
  wr.send_flags = IBV_SEND_SIGNALED | (is_write && size <= max_inline ? IBV_SEND_INLINE : 0);
  wr.wr.rdma.remote_addr = shared.addr;
  wr.wr.rdma.rkey = shared.rkey;

  for (size_t i = 0; i < warmup + n; i++) {
    struct timespec t0, t1;
    wr.wr_id = i;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int rc = ibv_post_send(id->qp, &wr, &bad);
    if (rc) {
      errno = rc;
      die_errno("ibv_post_send");
    }
    int got;
    unsigned idle = 0;
    while ((got = ibv_poll_cq(id->send_cq, 1, &wc)) == 0) {
      if (yield_every && ++idle % yield_every == 0) sched_yield();
    }
    for (size_t p = 0; p < touch_pages; p++) touch_buf[p * 4096 + (p % 64) * 64]++;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (got < 0) die("ibv_poll_cq failed");
    if (wc.status != IBV_WC_SUCCESS) die("%s %u: completion %s", op, size, ibv_wc_status_str(wc.status));
    if (wc.wr_id != i) die("unexpected wr_id %" PRIu64, wc.wr_id);
    if (i >= warmup) samples[i - warmup] = ts_us(&t0, &t1);
  }
  double sum = 0;
  for (size_t i = 0; i < n; i++) sum += samples[i];
  qsort(samples, n, sizeof *samples, cmp_double);
  printf("{\"impl\":\"c-loop\",\"op\":\"%s\",\"size\":%u,\"n\":%zu,\"warmup\":%zu,"
         "\"p50_us\":%.3f,\"p99_us\":%.3f,\"avg_us\":%.3f,\"min_us\":%.3f,\"max_us\":%.3f,\"inline\":%s}\n",
         op, size, n, warmup, percentile(samples, n, 50), percentile(samples, n, 99), sum / (double)n, samples[0],
         samples[n - 1], (wr.send_flags & IBV_SEND_INLINE) ? "true" : "false");
  fflush(stdout);
}

static size_t env_size(const char *name, size_t dflt) {
  const char *v = getenv(name);
  if (!v || !*v) return dflt;
  char *end;
  unsigned long long x = strtoull(v, &end, 10);
  if (*end) die("%s=%s is not a number", name, v);
  return (size_t)x;
}

int main(int argc, char **argv) {
  const char *addr = getenv("NPMU_RXE_ADDR");
  clock_gettime(CLOCK_MONOTONIC, &t_start);
  verbose = getenv("NPMU_BENCH_VERBOSE") && *getenv("NPMU_BENCH_VERBOSE");
  size_t n = env_size("NPMU_BENCH_ITERS", 2000), warmup = env_size("NPMU_BENCH_WARMUP", 100);
  char sizes_arg[256] = "64,4096", ops_arg[64] = "write,read";
  const char *cpu_arg = getenv("NPMU_BENCH_CPU");
  int fifo = getenv("NPMU_BENCH_SCHED") && strcmp(getenv("NPMU_BENCH_SCHED"), "fifo") == 0;
  int c;
  while ((c = getopt(argc, argv, "a:n:w:s:o:i:y:t:c:Fh")) != -1) {
    switch (c) {
      case 'a': addr = optarg; break;
      case 'n': n = strtoull(optarg, NULL, 10); break;
      case 'w': warmup = strtoull(optarg, NULL, 10); break;
      case 's': snprintf(sizes_arg, sizeof sizes_arg, "%s", optarg); break;
      case 'o': snprintf(ops_arg, sizeof ops_arg, "%s", optarg); break;
      case 'i': max_inline = (uint32_t)strtoul(optarg, NULL, 10); break;
      case 'y': yield_every = (unsigned)strtoul(optarg, NULL, 10); break;
      case 't': touch_pages = strtoull(optarg, NULL, 10); break;
      case 'c': cpu_arg = optarg; break;
      case 'F': fifo = 1; break;
      default:
        fprintf(stderr, "usage: %s [-a ADDR] [-n N] [-w WARMUP] [-s 64,4096] [-o write,read] [-i INLINE] [-y N] [-t PAGES] [-c CPU] [-F]\n", argv[0]);
        return c == 'h' ? 0 : 2;
    }
  }
  if (!addr || !*addr) die("no address: pass -a ADDR or set NPMU_RXE_ADDR");
  if (n < 1) die("-n must be at least 1");
  /* Before the server thread exists: it inherits both. */
  if (cpu_arg && *cpu_arg) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET((int)strtol(cpu_arg, NULL, 10), &set);
    if (sched_setaffinity(0, sizeof set, &set)) die_errno("sched_setaffinity");
  }
  if (fifo) {
    struct sched_param sp = {.sched_priority = 1};
    if (sched_setscheduler(0, SCHED_FIFO, &sp)) die_errno("sched_setscheduler(SCHED_FIFO)");
  }
  if (touch_pages) {
    touch_buf = calloc(touch_pages, 4096);
    if (!touch_buf) die("out of memory");
  }

  uint32_t sizes[MAX_SIZES];
  size_t nsizes = 0;
  for (char *s = strtok(sizes_arg, ","); s; s = strtok(NULL, ",")) {
    if (nsizes == MAX_SIZES) die("too many sizes");
    unsigned long v = strtoul(s, NULL, 10);
    if (v < 1 || v > BUF_SIZE) die("bad size %s", s);
    sizes[nsizes++] = (uint32_t)v;
  }
  char *ops[2];
  size_t nops = 0;
  for (char *s = strtok(ops_arg, ","); s; s = strtok(NULL, ",")) {
    if (strcmp(s, "write") && strcmp(s, "read")) die("bad op %s (write or read)", s);
    if (nops == 2) die("too many ops");
    ops[nops++] = s;
  }

  struct ibv_qp_init_attr attr;
  memset(&attr, 0, sizeof attr);
  attr.cap.max_send_wr = 16;
  attr.cap.max_recv_wr = 1;
  attr.cap.max_send_sge = 1;
  attr.cap.max_recv_sge = 1;
  attr.cap.max_inline_data = max_inline;
  attr.qp_type = IBV_QPT_RC;
  attr.sq_sig_all = 0;

  /* Server: passive endpoint on ADDR, any port. */
  struct rdma_addrinfo hints, *res;
  memset(&hints, 0, sizeof hints);
  hints.ai_flags = RAI_PASSIVE | RAI_NUMERICHOST;
  hints.ai_port_space = RDMA_PS_TCP;
  int rc = rdma_getaddrinfo(addr, "0", &hints, &res);
  if (rc) die("rdma_getaddrinfo(%s, passive): %s", addr, rc == -1 ? strerror(errno) : gai_strerror(rc));
  struct ibv_qp_init_attr sattr = attr;
  if (rdma_create_ep(&listen_id, res, NULL, &sattr)) die_errno("rdma_create_ep (listen)");
  rdma_freeaddrinfo(res);
  if (rdma_listen(listen_id, 1)) die_errno("rdma_listen");
  char port[16];
  snprintf(port, sizeof port, "%u", ntohs(rdma_get_src_port(listen_id)));

  pthread_t server;
  if ((rc = pthread_create(&server, NULL, server_main, NULL))) {
    errno = rc;
    die_errno("pthread_create");
  }

  /* Client: active endpoint to ADDR:port. */
  memset(&hints, 0, sizeof hints);
  hints.ai_flags = RAI_NUMERICHOST;
  hints.ai_port_space = RDMA_PS_TCP;
  rc = rdma_getaddrinfo(addr, port, &hints, &res);
  if (rc) die("rdma_getaddrinfo(%s:%s): %s", addr, port, rc == -1 ? strerror(errno) : gai_strerror(rc));
  struct rdma_cm_id *id;
  struct ibv_qp_init_attr cattr = attr;
  if (rdma_create_ep(&id, res, NULL, &cattr)) die_errno("rdma_create_ep (client)");
  rdma_freeaddrinfo(res);
  void *buf = aligned_alloc(4096, BUF_SIZE);
  if (!buf) die("out of memory");
  memset(buf, 0x5a, BUF_SIZE);
  struct ibv_mr *mr = ibv_reg_mr(id->pd, buf, BUF_SIZE, IBV_ACCESS_LOCAL_WRITE);
  if (!mr) die_errno("client ibv_reg_mr");
  struct rdma_conn_param p = conn_param();
  phase("connecting");
  if (rdma_connect(id, &p)) die_errno("rdma_connect");
  phase("connected");

  pthread_mutex_lock(&shared.m);
  while (!shared.ready) pthread_cond_wait(&shared.c, &shared.m);
  int failed = shared.failed;
  pthread_mutex_unlock(&shared.m);
  if (failed) die("server side failed");

  double *samples = malloc(n * sizeof *samples);
  if (!samples) die("out of memory");
  for (size_t o = 0; o < nops; o++)
    for (size_t s = 0; s < nsizes; s++) run(id, mr, ops[o], sizes[s], warmup, n, samples);
  free(samples);
  phase("measured");

  /* Both ends disconnect at once: a synchronous rdma_disconnect waits for the
   * peer's reply, which the peer only sends when it disconnects too. */
  pthread_mutex_lock(&shared.m);
  shared.done = 1;
  pthread_cond_broadcast(&shared.c);
  pthread_mutex_unlock(&shared.m);
  rdma_disconnect(id);
  pthread_join(server, NULL);
  ibv_dereg_mr(mr);
  rdma_destroy_ep(id);
  rdma_destroy_ep(listen_id);
  free(buf);
  phase("torn down");
  return 0;
}
