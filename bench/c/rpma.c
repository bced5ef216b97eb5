/*
 * rpma.c: librpma (1.2, Debian's librpma-dev) beside the C peer (peer.c) in the
 * data-path benchmark: how long PMDK's remote persistent memory library takes
 * for one remote write made durable, on the same device in the same boot.
 *
 * One process, two librpma peers on the same RDMA device:
 * - a server on a pthread (rpma_ep_listen / rpma_ep_next_conn_req /
 *   rpma_conn_req_connect) registers its target memory with rpma_mr_reg
 *   (WRITE_DST | READ_SRC | FLUSH_TYPE_VISIBILITY, plus FLUSH_TYPE_PERSISTENT
 *   when the target is persistent, see below) and sends the client the MR's
 *   descriptor and its peer configuration's descriptor as the connection's
 *   private data, as librpma's examples do;
 * - the client (main thread) connects (rpma_conn_req_new /
 *   rpma_conn_req_connect), builds the remote MR from the descriptor and applies
 *   the server's peer configuration (rpma_conn_apply_remote_peer_cfg).
 *
 * Per iteration, t = clock_gettime(CLOCK_MONOTONIC) before the first call and
 * after the completion:
 *   write-flush  rpma_write(SIZE bytes, RPMA_F_COMPLETION_ON_ERROR) then
 *                rpma_flush(RPMA_F_COMPLETION_ALWAYS), wait for the flush's
 *                completion (librpma's idiom for a durable write)
 *   write        rpma_write(SIZE bytes, RPMA_F_COMPLETION_ALWAYS), wait for it
 *   read         rpma_read(SIZE bytes, RPMA_F_COMPLETION_ALWAYS), wait for it
 * Completions are busy-polled (rpma_cq_get_wc until it stops answering
 * RPMA_E_NO_COMPLETION), as peer.c polls ibv_poll_cq. All at offset 0.
 * One JSON line per (op, size), in lat.c's format:
 *   {"impl":"librpma","op":"write-flush","size":64,"n":..,"p50_us":..,...,"flush":"persistent"}
 *
 * Flush type: RPMA_FLUSH_TYPE_PERSISTENT when the target is devdax on a
 * platform whose persistence domain is the CPU cache (eADR: the region's
 * persistence_domain in sysfs reads cpu_cache): rxe places RDMA data with CPU
 * stores, which are durable there, so the server declares "direct write to
 * pmem" (rpma_peer_cfg_set_direct_write_to_pmem). Otherwise
 * RPMA_FLUSH_TYPE_VISIBILITY. -P overrides. The JSON says which ("flush") and
 * what the platform said ("domain"). On Linux 6.1 rxe has no native RDMA
 * FLUSH, so librpma's flush of either type is an 8-byte RDMA READ after the
 * write (its "appliance persistency method").
 *
 * usage: rpma [-a ADDR] [-n N] [-w WARMUP] [-s SIZES] [-o OPS] [-f PATH]
 *             [-m BYTES] [-p PORT] [-P persistent|visibility]
 *   ADDR   IPv4 address of the RDMA device (default $NPMU_RXE_ADDR)
 *   SIZES  comma list of byte counts (default 64,4096)
 *   OPS    comma list of write-flush,write,read (default: all three)
 *   PATH   a devdax device (/dev/dax0.0) or file mapped MAP_SHARED as the
 *          target instead of anonymous memory (a regular file is
 *          created or extended to BYTES)
 *   BYTES  size of the target (default 64 MiB; a multiple of 4096)
 *   PORT   first TCP-space port to listen on (default 18700; the next ones
 *          are tried while it is taken)
 * env NPMU_BENCH_ITERS / NPMU_BENCH_WARMUP give defaults for -n / -w.
 * Exit status 0 on success; 1 on a failure or a bad argument (message on
 * stderr); 2 on an unknown option.
 *
 * build: cc -O2 -Wall -Wextra -o rpma rpma.c -lrpma -libverbs -lpthread
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <librpma.h>

#define MAX_SIZES 16

static void die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("rpma: ", stderr);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  exit(1);
}

/* librpma calls return 0 or a negative RPMA_E_* code. */
static void check(int rc, const char *what) {
  if (rc) die("%s: %s%s%s", what, rpma_err_2str(rc), rc == RPMA_E_PROVIDER ? ": " : "",
              rc == RPMA_E_PROVIDER ? strerror(errno) : "");
}

/* ---- the target ------------------------------------------------------------ */

static const char *target_kind = "anon";
static char domain[32] = "none";

/* The persistence_domain of the nd region above a devdax device, from sysfs. */
static void read_domain(dev_t rdev) {
  char link[128], dir[PATH_MAX];
  snprintf(link, sizeof link, "/sys/dev/char/%u:%u", major(rdev), minor(rdev));
  if (!realpath(link, dir)) return;
  for (;;) {
    char f[PATH_MAX + 32];
    snprintf(f, sizeof f, "%s/persistence_domain", dir);
    FILE *fp = fopen(f, "r");
    if (fp) {
      if (fgets(domain, sizeof domain, fp)) domain[strcspn(domain, "\n")] = 0;
      fclose(fp);
      if (!domain[0]) snprintf(domain, sizeof domain, "none");
      return;
    }
    char *slash = strrchr(dir, '/');
    if (!slash || slash == dir || strcmp(dir, "/sys/devices") == 0) return;
    *slash = 0;
  }
}

static void *map_target(const char *path, size_t len) {
  void *p;
  if (!path) {
    p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) die("mmap (anonymous target): %s", strerror(errno));
    memset(p, 0xab, len);
    return p;
  }
  int fd = open(path, O_RDWR | O_CREAT, 0600);
  if (fd < 0) die("open %s: %s", path, strerror(errno));
  struct stat st;
  if (fstat(fd, &st)) die("fstat %s: %s", path, strerror(errno));
  if (S_ISCHR(st.st_mode)) {
    target_kind = "devdax";
    read_domain(st.st_rdev);
  } else if (S_ISREG(st.st_mode)) {
    target_kind = "file";
    if ((size_t)st.st_size < len && ftruncate(fd, (off_t)len)) die("ftruncate %s: %s", path, strerror(errno));
  } else {
    die("%s is neither a regular file nor a character (devdax) device", path);
  }
  p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) die("mmap %zu bytes of %s (MAP_SHARED): %s", len, path, strerror(errno));
  close(fd);
  return p;
}

/* ---- server ---------------------------------------------------------------- */

static struct rpma_ep *ep;
static struct rpma_peer *server_peer;
static struct rpma_mr_local *server_mr;
static struct rpma_peer_cfg *server_pcfg;
static struct rpma_conn_cfg *conn_cfg;
/* private data: [1 byte: MR descriptor size][MR descriptor][peer cfg descriptor] */
static uint8_t pdata_buf[255];
static uint8_t pdata_len;

static int wait_event(struct rpma_conn *conn, enum rpma_conn_event want, const char *who) {
  enum rpma_conn_event ev = RPMA_CONN_UNDEFINED;
  check(rpma_conn_next_event(conn, &ev), "rpma_conn_next_event");
  if (ev != want)
    die("%s: connection event %s where %s was due", who, rpma_utils_conn_event_2str(ev), rpma_utils_conn_event_2str(want));
  return 0;
}

static void *server_main(void *arg) {
  (void)arg;
  struct rpma_conn_req *req = NULL;
  check(rpma_ep_next_conn_req(ep, conn_cfg, &req), "server rpma_ep_next_conn_req");
  struct rpma_conn_private_data pd = {pdata_buf, pdata_len};
  struct rpma_conn *conn = NULL;
  check(rpma_conn_req_connect(&req, &pd, &conn), "server rpma_conn_req_connect");
  wait_event(conn, RPMA_CONN_ESTABLISHED, "server");
  /* Until the client disconnects. */
  enum rpma_conn_event ev = RPMA_CONN_UNDEFINED;
  check(rpma_conn_next_event(conn, &ev), "server rpma_conn_next_event");
  if (ev != RPMA_CONN_CLOSED) fprintf(stderr, "rpma: server: %s at the end\n", rpma_utils_conn_event_2str(ev));
  rpma_conn_disconnect(conn);
  rpma_conn_delete(&conn);
  return NULL;
}

/* ---- client ---------------------------------------------------------------- */

static double ts_us(const struct timespec *a, const struct timespec *b) {
  return (double)(b->tv_sec - a->tv_sec) * 1e6 + (double)(b->tv_nsec - a->tv_nsec) / 1e3;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double percentile(const double *sorted, size_t n, double p) {
  double x = (p / 100.0) * (double)n;
  size_t rank = (size_t)x;
  if (x - (double)rank > 1e-9) rank++;
  if (rank < 1) rank = 1;
  if (rank > n) rank = n;
  return sorted[rank - 1];
}

static void wait_one(struct rpma_cq *cq, const void *ctx, const char *what) {
  struct ibv_wc wc;
  int rc;
  while ((rc = rpma_cq_get_wc(cq, 1, &wc, NULL)) == RPMA_E_NO_COMPLETION) {
  }
  check(rc, "rpma_cq_get_wc");
  if (wc.status != IBV_WC_SUCCESS) die("%s: completion %s", what, ibv_wc_status_str(wc.status));
  if (wc.wr_id != (uint64_t)(uintptr_t)ctx) die("%s: unexpected completion (wr_id %llu)", what, (unsigned long long)wc.wr_id);
}

int main(int argc, char **argv) {
  const char *addr = getenv("NPMU_RXE_ADDR");
  const char *e;
  size_t n = (e = getenv("NPMU_BENCH_ITERS")) && *e ? strtoull(e, NULL, 10) : 2000;
  size_t warmup = (e = getenv("NPMU_BENCH_WARMUP")) && *e ? strtoull(e, NULL, 10) : 100;
  char sizes_arg[256] = "64,4096", ops_arg[64] = "write-flush,write,read";
  const char *path = NULL, *force = NULL;
  size_t len = 64u << 20;
  unsigned port0 = 18700;
  int c;
  while ((c = getopt(argc, argv, "a:n:w:s:o:f:m:p:P:h")) != -1) {
    switch (c) {
      case 'a': addr = optarg; break;
      case 'n': n = strtoull(optarg, NULL, 10); break;
      case 'w': warmup = strtoull(optarg, NULL, 10); break;
      case 's': snprintf(sizes_arg, sizeof sizes_arg, "%s", optarg); break;
      case 'o': snprintf(ops_arg, sizeof ops_arg, "%s", optarg); break;
      case 'f': path = optarg; break;
      case 'm': len = strtoull(optarg, NULL, 10); break;
      case 'p': port0 = (unsigned)strtoul(optarg, NULL, 10); break;
      case 'P': force = optarg; break;
      default:
        fprintf(c == 'h' ? stdout : stderr,
                "usage: %s [-a ADDR] [-n N] [-w WARMUP] [-s 64,4096] [-o write-flush,write,read] [-f PATH]\n"
                "          [-m BYTES] [-p PORT] [-P persistent|visibility]\n",
                argv[0]);
        return c == 'h' ? 0 : 2;
    }
  }
  if (optind < argc) die("unexpected argument %s", argv[optind]);
  if (!addr || !*addr) die("no address: pass -a ADDR or set NPMU_RXE_ADDR");
  if (n < 1) die("-n must be at least 1");
  if (len < 4096 || len % 4096) die("-m %zu: must be a positive multiple of 4096", len);
  if (force && strcmp(force, "persistent") && strcmp(force, "visibility")) die("-P %s: persistent or visibility", force);
  if (port0 < 1 || port0 > 65535) die("-p: bad port");

  uint32_t sizes[MAX_SIZES];
  size_t nsizes = 0, max_size = 0;
  for (char *s = strtok(sizes_arg, ","); s; s = strtok(NULL, ",")) {
    if (nsizes == MAX_SIZES) die("too many sizes");
    char *end;
    unsigned long v = strtoul(s, &end, 10);
    if (*end || v < 1 || v > len) die("bad size %s", s);
    sizes[nsizes++] = (uint32_t)v;
    if (v > max_size) max_size = v;
  }
  const char *names[3] = {"write-flush", "write", "read"};
  int want[3] = {0, 0, 0};
  for (char *s = strtok(ops_arg, ","); s; s = strtok(NULL, ",")) {
    int k = !strcmp(s, "write-flush") ? 0 : !strcmp(s, "write") ? 1 : !strcmp(s, "read") ? 2 : -1;
    if (k < 0) die("bad op %s (write-flush, write or read)", s);
    want[k] = 1;
  }
  /* librpma logs its own errors to stderr too; keep warnings and worse. */
  rpma_log_set_threshold(RPMA_LOG_THRESHOLD_AUX, RPMA_LOG_LEVEL_WARNING);

  void *target = map_target(path, len);
  bool persistent = force ? !strcmp(force, "persistent")
                          : !strcmp(target_kind, "devdax") && !strcmp(domain, "cpu_cache");

  struct ibv_context *dev = NULL;
  check(rpma_utils_get_ibv_context(addr, RPMA_UTIL_IBV_CONTEXT_LOCAL, &dev), "rpma_utils_get_ibv_context");

  /* Server side: peer, MR, peer cfg, listening endpoint. */
  check(rpma_peer_new(dev, &server_peer), "server rpma_peer_new");
  int usage = RPMA_MR_USAGE_WRITE_DST | RPMA_MR_USAGE_READ_SRC | RPMA_MR_USAGE_FLUSH_TYPE_VISIBILITY |
              (persistent ? RPMA_MR_USAGE_FLUSH_TYPE_PERSISTENT : 0);
  check(rpma_mr_reg(server_peer, target, len, usage, &server_mr), "server rpma_mr_reg");
  check(rpma_peer_cfg_new(&server_pcfg), "rpma_peer_cfg_new");
  check(rpma_peer_cfg_set_direct_write_to_pmem(server_pcfg, persistent), "rpma_peer_cfg_set_direct_write_to_pmem");
  size_t mr_desc = 0, pcfg_desc = 0;
  check(rpma_mr_get_descriptor_size(server_mr, &mr_desc), "rpma_mr_get_descriptor_size");
  check(rpma_peer_cfg_get_descriptor_size(server_pcfg, &pcfg_desc), "rpma_peer_cfg_get_descriptor_size");
  if (1 + mr_desc + pcfg_desc > sizeof pdata_buf) die("descriptors too large for private data");
  pdata_buf[0] = (uint8_t)mr_desc;
  check(rpma_mr_get_descriptor(server_mr, pdata_buf + 1), "rpma_mr_get_descriptor");
  check(rpma_peer_cfg_get_descriptor(server_pcfg, pdata_buf + 1 + mr_desc), "rpma_peer_cfg_get_descriptor");
  pdata_len = (uint8_t)(1 + mr_desc + pcfg_desc);

  check(rpma_conn_cfg_new(&conn_cfg), "rpma_conn_cfg_new");
  check(rpma_conn_cfg_set_timeout(conn_cfg, 10000), "rpma_conn_cfg_set_timeout"); /* TCG guests are slow */
  char port[8];
  int rc = -1;
  for (unsigned p = port0; p < port0 + 64 && p <= 65535; p++) {
    snprintf(port, sizeof port, "%u", p);
    if ((rc = rpma_ep_listen(server_peer, addr, port, &ep)) == 0) break;
  }
  check(rc, "rpma_ep_listen (64 ports tried)");
  pthread_t server;
  if ((rc = pthread_create(&server, NULL, server_main, NULL))) die("pthread_create: %s", strerror(rc));

  /* Client side. */
  struct rpma_peer *peer = NULL;
  check(rpma_peer_new(dev, &peer), "client rpma_peer_new");
  void *buf = aligned_alloc(4096, (max_size + 4095) / 4096 * 4096);
  if (!buf) die("out of memory");
  memset(buf, 0x5a, max_size);
  struct rpma_mr_local *mr = NULL;
  check(rpma_mr_reg(peer, buf, (max_size + 4095) / 4096 * 4096, RPMA_MR_USAGE_WRITE_SRC | RPMA_MR_USAGE_READ_DST, &mr),
        "client rpma_mr_reg");
  struct rpma_conn_req *req = NULL;
  check(rpma_conn_req_new(peer, addr, port, conn_cfg, &req), "rpma_conn_req_new");
  struct rpma_conn *conn = NULL;
  check(rpma_conn_req_connect(&req, NULL, &conn), "client rpma_conn_req_connect");
  wait_event(conn, RPMA_CONN_ESTABLISHED, "client");
  struct rpma_conn_private_data pd;
  check(rpma_conn_get_private_data(conn, &pd), "rpma_conn_get_private_data");
  if (pd.len < 1 || !pd.ptr) die("no private data from the server");
  const uint8_t *b = pd.ptr;
  if ((size_t)1 + b[0] > pd.len) die("short private data");
  struct rpma_mr_remote *rmr = NULL;
  check(rpma_mr_remote_from_descriptor(b + 1, b[0], &rmr), "rpma_mr_remote_from_descriptor");
  struct rpma_peer_cfg *rpcfg = NULL;
  check(rpma_peer_cfg_from_descriptor(b + 1 + b[0], pd.len - 1 - b[0], &rpcfg), "rpma_peer_cfg_from_descriptor");
  check(rpma_conn_apply_remote_peer_cfg(conn, rpcfg), "rpma_conn_apply_remote_peer_cfg");
  int rflush = 0;
  check(rpma_mr_remote_get_flush_type(rmr, &rflush), "rpma_mr_remote_get_flush_type");
  bool direct = false;
  check(rpma_peer_cfg_get_direct_write_to_pmem(rpcfg, &direct), "rpma_peer_cfg_get_direct_write_to_pmem");
  enum rpma_flush_type ftype =
      direct && (rflush & RPMA_MR_USAGE_FLUSH_TYPE_PERSISTENT) ? RPMA_FLUSH_TYPE_PERSISTENT : RPMA_FLUSH_TYPE_VISIBILITY;
  const char *fname = ftype == RPMA_FLUSH_TYPE_PERSISTENT ? "persistent" : "visibility";
  struct rpma_cq *cq = NULL;
  check(rpma_conn_get_cq(conn, &cq), "rpma_conn_get_cq");

  double *samples = malloc(n * sizeof *samples);
  if (!samples) die("out of memory");
  static const char ctx_w, ctx_f, ctx_r; /* op contexts, come back as wr_id */
  for (int o = 0; o < 3; o++) {
    if (!want[o]) continue;
    for (size_t s = 0; s < nsizes; s++) {
      uint32_t size = sizes[s];
      for (size_t i = 0; i < warmup + n; i++) {
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        if (o == 0) {
          check(rpma_write(conn, rmr, 0, mr, 0, size, RPMA_F_COMPLETION_ON_ERROR, &ctx_w), "rpma_write");
          check(rpma_flush(conn, rmr, 0, size, ftype, RPMA_F_COMPLETION_ALWAYS, &ctx_f), "rpma_flush");
          wait_one(cq, &ctx_f, "write-flush");
        } else if (o == 1) {
          check(rpma_write(conn, rmr, 0, mr, 0, size, RPMA_F_COMPLETION_ALWAYS, &ctx_w), "rpma_write");
          wait_one(cq, &ctx_w, "write");
        } else {
          check(rpma_read(conn, mr, 0, rmr, 0, size, RPMA_F_COMPLETION_ALWAYS, &ctx_r), "rpma_read");
          wait_one(cq, &ctx_r, "read");
        }
        clock_gettime(CLOCK_MONOTONIC, &t1);
        if (i >= warmup) samples[i - warmup] = ts_us(&t0, &t1);
      }
      double sum = 0;
      for (size_t i = 0; i < n; i++) sum += samples[i];
      qsort(samples, n, sizeof *samples, cmp_double);
      printf("{\"impl\":\"librpma\",\"op\":\"%s\",\"size\":%u,\"n\":%zu,\"warmup\":%zu,"
             "\"p50_us\":%.3f,\"p99_us\":%.3f,\"avg_us\":%.3f,\"min_us\":%.3f,\"max_us\":%.3f,",
             names[o], size, n, warmup, percentile(samples, n, 50), percentile(samples, n, 99), sum / (double)n,
             samples[0], samples[n - 1]);
      if (o == 0) printf("\"flush\":\"%s\",", fname);
      printf("\"target\":\"%s\",\"domain\":\"%s\"}\n", target_kind, domain);
      fflush(stdout);
    }
  }
  free(samples);

  check(rpma_conn_disconnect(conn), "rpma_conn_disconnect");
  enum rpma_conn_event ev = RPMA_CONN_UNDEFINED;
  check(rpma_conn_next_event(conn, &ev), "client rpma_conn_next_event");
  pthread_join(server, NULL);
  rpma_conn_delete(&conn);
  rpma_mr_remote_delete(&rmr);
  rpma_peer_cfg_delete(&rpcfg);
  rpma_mr_dereg(&mr);
  rpma_ep_shutdown(&ep);
  rpma_mr_dereg(&server_mr);
  rpma_peer_cfg_delete(&server_pcfg);
  rpma_conn_cfg_delete(&conn_cfg);
  rpma_peer_delete(&peer);
  rpma_peer_delete(&server_peer);
  free(buf);
  munmap(target, len);
  return 0;
}
