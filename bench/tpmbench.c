/*
 * tpmbench - benchmark client for TPM 2.0 backends reachable over a TCP
 * data channel (the `--server type=tcp,port=N` socket of `swtpm socket`
 * and of vtpmd).
 *
 * Single file, libc and pthreads only.  Build:  gcc -O2 -Wall -pthread -o tpmbench tpmbench.c
 *
 * Subcommands
 *   cmd    --port P --op OP --count N [--warmup W]
 *          OP = getrandom | pcrextend | createprimary | nvincrement
 *          Prints one line:
 *          op=OP count=N seconds=S ops_per_sec=X p50_us=A p95_us=B p99_us=C max_us=M
 *          (createprimary adds flush_p50_us / flush_p99_us / create_ops_per_sec,
 *          see below).
 *   rss    --port P [--count 10000]
 *          Sends COUNT mixed commands (GetRandom, PCR_Extend, CreatePrimary,
 *          FlushContext, NV_Increment); the caller samples the server's
 *          VmRSS afterwards.
 *   spawn  --port P [--repeat R] [--fresh-state] [--server-cpu C] [--timeout-ms T] -- CMD ARGS...
 *          Spawns CMD (which must listen on data port P), polls the port with
 *          TPM2_GetRandom until the first rc==0 response, records the time
 *          from spawn to that response, terminates CMD; repeated R times.
 *          Any argument containing "@STATEDIR@" gets that token replaced by a
 *          state directory created by tpmbench: a new empty one per repetition
 *          with --fresh-state, otherwise one directory shared by all
 *          repetitions (an extra, untimed repetition runs first so that the
 *          timed ones start from an existing state).  --server-cpu pins the
 *          spawned process to one CPU (set before the clock starts).
 *          Prints: op=spawn repeat=R fresh_state=0|1 p50_ms=.. min_ms=.. max_ms=..
 *   storm  --ports P1,P2,... --bystander B [--rounds R]
 *          The registry storm of one host: each data port P (control P+1) is
 *          a VM; one thread per VM, released together, runs R rounds of
 *          savevm (GET_STATEBLOB types 1, 2, 3) then loadvm of the same state
 *          (STOP, SET_STATEBLOB of the non-empty blobs, INIT(1)), a GetRandom
 *          before each round.  Meanwhile a bystander VM (data port B, outside
 *          the storm) runs GetRandom in a loop.  Any non-zero result counts
 *          as an error (exit status 1).
 *          Prints: op=storm vms=N rounds=R errors=E seconds=S get_p50_ms=..
 *          get_p99_ms=.. init_p50_ms=.. init_p99_ms=.. by_p50_us=.. by_p99_us=..
 *          by_max_us=.. by_count=..
 *   rekey  --src-ctrl P --dst-ctrl Q --count N [--dst-data D]
 *          Clone-rekey latency over the control channel (vtpmd with
 *          --vm-id on both ends, same --ca/--registry/--host-key, different
 *          vm-ids).  Takes the permanent and volatile blob from the source
 *          once (GET_STATEBLOB flags=1, types 1 and 2), then N times on the
 *          destination: STOP (untimed), then SET_STATEBLOB type 1,
 *          SET_STATEBLOB type 2, INIT(flags=1), timed from before the first
 *          SET to the INIT reply; every result must be 0.  With --dst-data,
 *          a GetRandom on the destination's data port after each INIT
 *          (untimed) checks that the rekeyed TPM answers.
 *          Prints: op=rekey count=N p50_ms=.. p95_ms=.. max_ms=.. min_ms=..
 *          set_p50_ms=.. init_p50_ms=.. perm_bytes=.. vol_bytes=..
 *   savevm --ctrl P --data D --count N [--warmup W]
 *          The control-channel part of a QEMU savevm: each round sends one
 *          PCR_Extend on the data port (untimed; the TPM ran since the last
 *          savevm), then times GET_STATEBLOB types 1, 2, 3 (flags=1,
 *          offset 0); 1 and 2 must answer 0, 3 must answer 0 or 0x800
 *          (TPM 2: no savestate blob).
 *          Prints: op=savevm count=N p50_us=.. p95_us=.. max_us=..
 *          perm_p50_us=.. vol_p50_us=.. save_p50_us=.. perm_bytes=.. vol_bytes=..
 *   floor-server --port P [--bind ADDR]
 *          Trivial single-threaded server: reads one TPM frame (framed by the
 *          size field), answers a canned success response.  Used to measure
 *          the loopback round-trip floor.
 *
 * Every frame is sent with one write() (swtpm 0.7.1 does not frame by the
 * size field and treats each read() as one command), one command is
 * outstanding at a time, responses are framed by their size field.
 * TCP_NODELAY is set on every socket.  Times come from CLOCK_MONOTONIC.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

/* ------------------------------------------------------------------ */
/* TPM 2.0 constants                                                   */

#define ST_NO_SESSIONS 0x8001u
#define ST_SESSIONS 0x8002u

#define CC_NV_UndefineSpace 0x00000122u
#define CC_NV_DefineSpace 0x0000012Au
#define CC_CreatePrimary 0x00000131u
#define CC_NV_Increment 0x00000134u
#define CC_Startup 0x00000144u
#define CC_FlushContext 0x00000165u
#define CC_GetRandom 0x0000017Bu
#define CC_PCR_Extend 0x00000182u

#define RH_OWNER 0x40000001u
#define RS_PW 0x40000009u

#define ALG_AES 0x0006u
#define ALG_SHA256 0x000Bu
#define ALG_NULL 0x0010u
#define ALG_ECC 0x0023u
#define ALG_CFB 0x0043u
#define ECC_NIST_P256 0x0003u

#define RC_SUCCESS 0x000u
#define RC_INITIALIZE 0x100u /* TPM2_Startup: already started */
#define RC_NV_DEFINED 0x14Cu

/* TPMA_OBJECT bits */
#define OA_FIXEDTPM (1u << 1)
#define OA_FIXEDPARENT (1u << 4)
#define OA_SENSITIVEDATAORIGIN (1u << 5)
#define OA_USERWITHAUTH (1u << 6)
#define OA_NODA (1u << 10)
#define OA_RESTRICTED (1u << 16)
#define OA_DECRYPT (1u << 17)

/* TPMA_NV bits */
#define NV_AUTHWRITE (1u << 2)
#define NV_TPM_NT_COUNTER (1u << 4) /* TPM_NT field (bits 7:4) = 1 */
#define NV_AUTHREAD (1u << 18)
#define NV_NO_DA (1u << 25)

#define NV_INDEX 0x01500BECu
#define PCR_INDEX 16u

#define FRAME_MAX 8192

/* ------------------------------------------------------------------ */
/* helpers                                                             */

static const char *g_prog = "tpmbench";

/* Things die() must not leave behind (spawn mode). */
static pid_t g_child = -1;
static const char *g_dirs[2];
static void rm_tree_flat(const char *dir);

static void die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void die(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "%s: FATAL: ", g_prog);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    if (g_child > 0) {
        kill(g_child, SIGKILL);
        waitpid(g_child, NULL, 0);
    }
    for (int i = 0; i < 2; i++)
        if (g_dirs[i])
            rm_tree_flat(g_dirs[i]);
    exit(1);
}

static inline uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void sleep_us(unsigned us)
{
    struct timespec ts = { us / 1000000u, (long)(us % 1000000u) * 1000L };
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static inline uint16_t get16(const uint8_t *p) { return (uint16_t)((p[0] << 8) | p[1]); }
static inline uint32_t get32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static inline void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static inline void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}

static long parse_long(const char *s, const char *what)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 0);
    if (errno || *s == '\0' || *end != '\0' || v < 0)
        die("bad value for %s: '%s'", what, s);
    return v;
}

/* ------------------------------------------------------------------ */
/* frame builder                                                       */

typedef struct {
    uint8_t b[1024];
    size_t n;
} frame_t;

static void fb_u8(frame_t *f, uint8_t v) { f->b[f->n++] = v; }
static void fb_u16(frame_t *f, uint16_t v) { put16(f->b + f->n, v); f->n += 2; }
static void fb_u32(frame_t *f, uint32_t v) { put32(f->b + f->n, v); f->n += 4; }
static void fb_begin(frame_t *f, uint16_t tag, uint32_t cc)
{
    f->n = 0;
    fb_u16(f, tag);
    fb_u32(f, 0); /* size, patched by fb_end */
    fb_u32(f, cc);
}
static void fb_end(frame_t *f) { put32(f->b + 2, (uint32_t)f->n); }

/* Authorization area with one password session and an empty password. */
static void fb_pw_session(frame_t *f)
{
    fb_u32(f, 9);     /* authorizationSize */
    fb_u32(f, RS_PW); /* sessionHandle */
    fb_u16(f, 0);     /* nonce: empty */
    fb_u8(f, 0);      /* sessionAttributes */
    fb_u16(f, 0);     /* hmac (password): empty */
}

static void build_startup_clear(frame_t *f)
{
    fb_begin(f, ST_NO_SESSIONS, CC_Startup);
    fb_u16(f, 0x0000); /* TPM_SU_CLEAR */
    fb_end(f);
}

static void build_getrandom(frame_t *f)
{
    fb_begin(f, ST_NO_SESSIONS, CC_GetRandom);
    fb_u16(f, 32);
    fb_end(f);
}

static void build_pcrextend(frame_t *f)
{
    fb_begin(f, ST_SESSIONS, CC_PCR_Extend);
    fb_u32(f, PCR_INDEX);
    fb_pw_session(f);
    fb_u32(f, 1); /* TPML_DIGEST_VALUES.count */
    fb_u16(f, ALG_SHA256);
    for (int i = 0; i < 32; i++)
        fb_u8(f, (uint8_t)(0xA0 + i));
    fb_end(f);
}

/* ECC NIST P-256 storage-key template (restricted decrypt, AES-128-CFB),
 * the same shape as tpm2-tools' default primary key. */
static void build_createprimary(frame_t *f)
{
    fb_begin(f, ST_SESSIONS, CC_CreatePrimary);
    fb_u32(f, RH_OWNER);
    fb_pw_session(f);
    /* TPM2B_SENSITIVE_CREATE: userAuth empty, data empty */
    fb_u16(f, 4);
    fb_u16(f, 0);
    fb_u16(f, 0);
    /* TPM2B_PUBLIC */
    size_t szpos = f->n;
    fb_u16(f, 0);
    fb_u16(f, ALG_ECC);    /* type */
    fb_u16(f, ALG_SHA256); /* nameAlg */
    fb_u32(f, OA_FIXEDTPM | OA_FIXEDPARENT | OA_SENSITIVEDATAORIGIN | OA_USERWITHAUTH |
                  OA_NODA | OA_RESTRICTED | OA_DECRYPT);
    fb_u16(f, 0);          /* authPolicy: empty */
    fb_u16(f, ALG_AES);    /* symmetric.algorithm */
    fb_u16(f, 128);        /* symmetric.keyBits */
    fb_u16(f, ALG_CFB);    /* symmetric.mode */
    fb_u16(f, ALG_NULL);   /* scheme */
    fb_u16(f, ECC_NIST_P256);
    fb_u16(f, ALG_NULL);   /* kdf */
    fb_u16(f, 0);          /* unique.x */
    fb_u16(f, 0);          /* unique.y */
    put16(f->b + szpos, (uint16_t)(f->n - szpos - 2));
    fb_u16(f, 0);          /* outsideInfo */
    fb_u32(f, 0);          /* creationPCR: count 0 */
    fb_end(f);
}

static void build_flush(frame_t *f, uint32_t handle)
{
    fb_begin(f, ST_NO_SESSIONS, CC_FlushContext);
    fb_u32(f, handle);
    fb_end(f);
}

static void build_nv_define(frame_t *f)
{
    fb_begin(f, ST_SESSIONS, CC_NV_DefineSpace);
    fb_u32(f, RH_OWNER);
    fb_pw_session(f);
    fb_u16(f, 0); /* auth: empty */
    size_t szpos = f->n;
    fb_u16(f, 0);
    fb_u32(f, NV_INDEX);
    fb_u16(f, ALG_SHA256);
    fb_u32(f, NV_TPM_NT_COUNTER | NV_AUTHWRITE | NV_AUTHREAD | NV_NO_DA);
    fb_u16(f, 0); /* authPolicy */
    fb_u16(f, 8); /* dataSize */
    put16(f->b + szpos, (uint16_t)(f->n - szpos - 2));
    fb_end(f);
}

static void build_nv_undefine(frame_t *f)
{
    fb_begin(f, ST_SESSIONS, CC_NV_UndefineSpace);
    fb_u32(f, RH_OWNER);
    fb_u32(f, NV_INDEX);
    fb_pw_session(f);
    fb_end(f);
}

static void build_nv_increment(frame_t *f)
{
    fb_begin(f, ST_SESSIONS, CC_NV_Increment);
    fb_u32(f, NV_INDEX); /* authHandle (AUTHWRITE: the index itself) */
    fb_u32(f, NV_INDEX); /* nvIndex */
    fb_pw_session(f);
    fb_end(f);
}

/* ------------------------------------------------------------------ */
/* sockets                                                             */

static const char *g_host = "127.0.0.1";

static void set_nodelay(int fd)
{
    int one = 1;
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0)
        die("setsockopt(TCP_NODELAY): %s", strerror(errno));
}

static void make_addr(struct sockaddr_in *sa, const char *host, int port)
{
    memset(sa, 0, sizeof *sa);
    sa->sin_family = AF_INET;
    sa->sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &sa->sin_addr) != 1)
        die("bad IPv4 address '%s'", host);
}

/* Returns a connected fd or -1 (errno set). */
static int try_connect(const char *host, int port)
{
    struct sockaddr_in sa;
    make_addr(&sa, host, port);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        die("socket: %s", strerror(errno));
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    set_nodelay(fd);
    return fd;
}

static int connect_or_die(const char *host, int port)
{
    int fd = try_connect(host, port);
    if (fd < 0)
        die("connect %s:%d: %s", host, port, strerror(errno));
    return fd;
}

static void write_all(int fd, const uint8_t *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            die("write: %s", strerror(errno));
        }
        p += w;
        n -= (size_t)w;
    }
}

/* Reads exactly one response frame, framed by its size field.
 * Returns the frame length; 0 on EOF before any byte; -1 on error (errno). */
static ssize_t read_frame(int fd, uint8_t *buf, size_t cap)
{
    size_t have = 0, want = 10;
    while (have < want) {
        ssize_t r = read(fd, buf + have, cap - have);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (r == 0) {
            if (have == 0)
                return 0;
            errno = EPROTO;
            return -1;
        }
        have += (size_t)r;
        if (want == 10 && have >= 10) {
            uint32_t sz = get32(buf + 2);
            if (sz < 10 || sz > cap) {
                errno = EMSGSIZE;
                return -1;
            }
            want = sz;
        }
    }
    if (have != want) {
        /* More bytes than the size field announced: with one command in
         * flight this is a framing bug on the server side. */
        errno = EBADMSG;
        return -1;
    }
    return (ssize_t)have;
}

/* ------------------------------------------------------------------ */
/* request/response                                                    */

typedef struct {
    int fd;
    uint8_t rsp[FRAME_MAX];
    size_t rlen;
} conn_t;

static const char *cc_name(uint32_t cc)
{
    switch (cc) {
    case CC_Startup: return "Startup";
    case CC_GetRandom: return "GetRandom";
    case CC_PCR_Extend: return "PCR_Extend";
    case CC_CreatePrimary: return "CreatePrimary";
    case CC_FlushContext: return "FlushContext";
    case CC_NV_DefineSpace: return "NV_DefineSpace";
    case CC_NV_UndefineSpace: return "NV_UndefineSpace";
    case CC_NV_Increment: return "NV_Increment";
    default: return "?";
    }
}

/* Sends one frame (single write), reads one response; returns its rc.
 * Dies on transport errors and on malformed responses. */
static uint32_t transact(conn_t *c, const frame_t *f)
{
    write_all(c->fd, f->b, f->n);
    ssize_t n = read_frame(c->fd, c->rsp, sizeof c->rsp);
    uint32_t cc = get32(f->b + 6);
    if (n == 0)
        die("%s: server closed the connection", cc_name(cc));
    if (n < 0)
        die("%s: reading response: %s", cc_name(cc), strerror(errno));
    c->rlen = (size_t)n;
    uint16_t tag = get16(c->rsp);
    if (tag != ST_NO_SESSIONS && tag != ST_SESSIONS)
        die("%s: bad response tag 0x%04x", cc_name(cc), tag);
    return get32(c->rsp + 6);
}

static void transact_ok(conn_t *c, const frame_t *f)
{
    uint32_t rc = transact(c, f);
    if (rc != RC_SUCCESS)
        die("%s: rc=0x%03x (expected 0)", cc_name(get32(f->b + 6)), rc);
}

typedef struct {
    frame_t startup, getrandom, pcrextend, createprimary, flush, nvdef, nvundef, nvinc;
} frames_t;

static void build_all(frames_t *fr)
{
    build_startup_clear(&fr->startup);
    build_getrandom(&fr->getrandom);
    build_pcrextend(&fr->pcrextend);
    build_createprimary(&fr->createprimary);
    build_flush(&fr->flush, 0);
    build_nv_define(&fr->nvdef);
    build_nv_undefine(&fr->nvundef);
    build_nv_increment(&fr->nvinc);
}

static uint32_t do_startup(conn_t *c, const frames_t *fr)
{
    uint32_t rc = transact(c, &fr->startup);
    if (rc != RC_SUCCESS && rc != RC_INITIALIZE)
        die("Startup(CLEAR): rc=0x%03x (expected 0 or 0x100)", rc);
    return rc;
}

static void do_getrandom(conn_t *c, const frames_t *fr)
{
    transact_ok(c, &fr->getrandom);
    if (c->rlen != 44 || get16(c->rsp + 10) != 32)
        die("GetRandom: unexpected response shape (len %zu)", c->rlen);
}

static uint32_t do_createprimary(conn_t *c, const frames_t *fr)
{
    transact_ok(c, &fr->createprimary);
    if (c->rlen < 14)
        die("CreatePrimary: response too short (%zu)", c->rlen);
    uint32_t h = get32(c->rsp + 10);
    if ((h >> 24) != 0x80)
        die("CreatePrimary: returned handle 0x%08x is not transient", h);
    return h;
}

static void do_flush(conn_t *c, frames_t *fr, uint32_t h)
{
    put32(fr->flush.b + 10, h);
    transact_ok(c, &fr->flush);
}

static void nv_define(conn_t *c, const frames_t *fr)
{
    uint32_t rc = transact(c, &fr->nvdef);
    if (rc == RC_NV_DEFINED) { /* left over from an earlier run */
        transact_ok(c, &fr->nvundef);
        rc = transact(c, &fr->nvdef);
    }
    if (rc != RC_SUCCESS)
        die("NV_DefineSpace: rc=0x%03x", rc);
}

/* ------------------------------------------------------------------ */
/* statistics                                                          */

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* nearest-rank percentile of a sorted array, in microseconds */
static double pct_us(const uint64_t *sorted, size_t n, double p)
{
    if (n == 0)
        return 0;
    size_t rank = (size_t)(p / 100.0 * (double)n + 0.999999999);
    if (rank < 1)
        rank = 1;
    if (rank > n)
        rank = n;
    return (double)sorted[rank - 1] / 1000.0;
}

/* ------------------------------------------------------------------ */
/* cmd                                                                 */

enum op { OP_GETRANDOM, OP_PCREXTEND, OP_CREATEPRIMARY, OP_NVINCREMENT };

static int cmd_main(int argc, char **argv)
{
    int port = -1;
    long count = -1, warmup = -1;
    const char *opname = NULL;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--port") && i + 1 < argc)
            port = (int)parse_long(argv[++i], "--port");
        else if (!strcmp(argv[i], "--host") && i + 1 < argc)
            g_host = argv[++i];
        else if (!strcmp(argv[i], "--op") && i + 1 < argc)
            opname = argv[++i];
        else if (!strcmp(argv[i], "--count") && i + 1 < argc)
            count = parse_long(argv[++i], "--count");
        else if (!strcmp(argv[i], "--warmup") && i + 1 < argc)
            warmup = parse_long(argv[++i], "--warmup");
        else
            die("cmd: unknown argument '%s'", argv[i]);
    }
    if (port <= 0 || !opname || count <= 0)
        die("usage: tpmbench cmd --port P --op getrandom|pcrextend|createprimary|nvincrement "
            "--count N [--warmup W]");
    enum op op;
    if (!strcmp(opname, "getrandom"))
        op = OP_GETRANDOM;
    else if (!strcmp(opname, "pcrextend"))
        op = OP_PCREXTEND;
    else if (!strcmp(opname, "createprimary"))
        op = OP_CREATEPRIMARY;
    else if (!strcmp(opname, "nvincrement"))
        op = OP_NVINCREMENT;
    else
        die("unknown op '%s'", opname);
    if (warmup < 0) {
        warmup = count / 10;
        if (warmup > 100)
            warmup = 100;
    }

    static frames_t fr;
    static conn_t c;
    build_all(&fr);
    c.fd = connect_or_die(g_host, port);
    uint32_t startup_rc = do_startup(&c, &fr);
    if (op == OP_NVINCREMENT)
        nv_define(&c, &fr);

    uint64_t *lat = calloc((size_t)count, sizeof *lat);
    uint64_t *flat = op == OP_CREATEPRIMARY ? calloc((size_t)count, sizeof *flat) : NULL;
    if (!lat || (op == OP_CREATEPRIMARY && !flat))
        die("out of memory");

    const frame_t *main_frame = op == OP_GETRANDOM ? &fr.getrandom
                              : op == OP_PCREXTEND ? &fr.pcrextend
                              : op == OP_NVINCREMENT ? &fr.nvinc
                              : &fr.createprimary;
    uint64_t tstart = 0;
    for (long i = 0; i < warmup + count; i++) {
        if (i == warmup)
            tstart = now_ns();
        uint64_t t0 = now_ns();
        uint32_t h = 0;
        switch (op) {
        case OP_GETRANDOM:
            do_getrandom(&c, &fr);
            break;
        case OP_CREATEPRIMARY:
            h = do_createprimary(&c, &fr);
            break;
        default:
            transact_ok(&c, main_frame);
        }
        uint64_t t1 = now_ns();
        if (i >= warmup)
            lat[i - warmup] = t1 - t0;
        if (op == OP_CREATEPRIMARY) {
            do_flush(&c, &fr, h);
            if (i >= warmup)
                flat[i - warmup] = now_ns() - t1;
        }
    }
    uint64_t tend = now_ns();

    if (op == OP_NVINCREMENT)
        transact_ok(&c, &fr.nvundef);
    close(c.fd);

    double secs = (double)(tend - tstart) / 1e9;
    double lat_sum = 0;
    for (long i = 0; i < count; i++)
        lat_sum += (double)lat[i];
    qsort(lat, (size_t)count, sizeof *lat, cmp_u64);
    printf("op=%s count=%ld seconds=%.4f ops_per_sec=%.1f p50_us=%.1f p95_us=%.1f p99_us=%.1f "
           "max_us=%.1f",
           opname, count, secs, (double)count / secs, pct_us(lat, (size_t)count, 50),
           pct_us(lat, (size_t)count, 95), pct_us(lat, (size_t)count, 99),
           (double)lat[count - 1] / 1000.0);
    if (op == OP_CREATEPRIMARY) {
        qsort(flat, (size_t)count, sizeof *flat, cmp_u64);
        printf(" flush_p50_us=%.1f flush_p99_us=%.1f create_ops_per_sec=%.1f",
               pct_us(flat, (size_t)count, 50), pct_us(flat, (size_t)count, 99),
               (double)count / (lat_sum / 1e9));
    }
    printf(" startup_rc=0x%03x\n", startup_rc);
    free(lat);
    free(flat);
    return 0;
}

/* ------------------------------------------------------------------ */
/* rss: mixed workload                                                 */

static int rss_main(int argc, char **argv)
{
    int port = -1;
    long count = 10000;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--port") && i + 1 < argc)
            port = (int)parse_long(argv[++i], "--port");
        else if (!strcmp(argv[i], "--host") && i + 1 < argc)
            g_host = argv[++i];
        else if (!strcmp(argv[i], "--count") && i + 1 < argc)
            count = parse_long(argv[++i], "--count");
        else
            die("rss: unknown argument '%s'", argv[i]);
    }
    if (port <= 0 || count <= 0)
        die("usage: tpmbench rss --port P [--count N]");

    static frames_t fr;
    static conn_t c;
    build_all(&fr);
    c.fd = connect_or_die(g_host, port);
    uint32_t startup_rc = do_startup(&c, &fr);
    nv_define(&c, &fr);

    /* Cycle of 10 commands: 4 GetRandom, 3 PCR_Extend, 1 CreatePrimary +
     * its FlushContext, 1 NV_Increment.  Every TPM command counts as one. */
    static const char pattern[10] = { 'g', 'p', 'g', 'p', 'c', 'f', 'g', 'n', 'p', 'g' };
    long n_g = 0, n_p = 0, n_c = 0, n_f = 0, n_n = 0;
    uint32_t h = 0;
    uint64_t t0 = now_ns();
    long i;
    for (i = 0; i < count; i++) {
        switch (pattern[i % 10]) {
        case 'g': do_getrandom(&c, &fr); n_g++; break;
        case 'p': transact_ok(&c, &fr.pcrextend); n_p++; break;
        case 'c': h = do_createprimary(&c, &fr); n_c++; break;
        case 'f': do_flush(&c, &fr, h); h = 0; n_f++; break;
        case 'n': transact_ok(&c, &fr.nvinc); n_n++; break;
        }
    }
    if (h != 0) /* count ended right after a CreatePrimary */
        do_flush(&c, &fr, h);
    double secs = (double)(now_ns() - t0) / 1e9;
    transact_ok(&c, &fr.nvundef);
    close(c.fd);
    printf("op=rss count=%ld seconds=%.3f cmds_per_sec=%.1f getrandom=%ld pcrextend=%ld "
           "createprimary=%ld flush=%ld nvincrement=%ld startup_rc=0x%03x\n",
           count, secs, (double)count / secs, n_g, n_p, n_c, n_f, n_n, startup_rc);
    return 0;
}

/* ------------------------------------------------------------------ */
/* spawn                                                               */

static void rm_tree_flat(const char *dir)
{
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *e;
        char path[4096];
        while ((e = readdir(d)) != NULL) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
                continue;
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
            if (unlink(path) != 0)
                fprintf(stderr, "warning: unlink %s: %s\n", path, strerror(errno));
        }
        closedir(d);
    }
    if (rmdir(dir) != 0)
        fprintf(stderr, "warning: rmdir %s: %s\n", dir, strerror(errno));
}

static char *make_statedir(void)
{
    const char *tmp = getenv("TMPDIR");
    char tmpl[4096];
    snprintf(tmpl, sizeof tmpl, "%s/tpmbench-state.XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(tmpl))
        die("mkdtemp: %s", strerror(errno));
    return strdup(tmpl);
}

static char **subst_argv(char **cmd, int n, const char *statedir)
{
    static const char tok[] = "@STATEDIR@";
    const size_t toklen = sizeof tok - 1;
    char **out = calloc((size_t)n + 1, sizeof *out);
    if (!out)
        die("out of memory");
    for (int i = 0; i < n; i++) {
        size_t hits = 0;
        for (const char *p = cmd[i]; statedir && (p = strstr(p, tok)) != NULL; p += toklen)
            hits++;
        size_t len = strlen(cmd[i]) + hits * (statedir ? strlen(statedir) : 0) + 1;
        char *o = malloc(len), *w = o;
        if (!o)
            die("out of memory");
        const char *p = cmd[i], *q;
        while (statedir && (q = strstr(p, tok)) != NULL) {
            memcpy(w, p, (size_t)(q - p));
            w += q - p;
            w = stpcpy(w, statedir);
            p = q + toklen;
        }
        strcpy(w, p);
        out[i] = o;
    }
    return out;
}

static void free_argv(char **v)
{
    for (char **p = v; *p; p++)
        free(*p);
    free(v);
}

static void stop_child(pid_t pid)
{
    kill(pid, SIGTERM);
    for (int i = 0; i < 300; i++) { /* up to 3 s */
        int st;
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid || (r < 0 && errno == ECHILD))
            return;
        sleep_us(10000);
    }
    fprintf(stderr, "warning: pid %d ignored SIGTERM for 3 s, sending SIGKILL\n", (int)pid);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
}

/* One spawn-to-first-response measurement.  Returns nanoseconds. */
static int g_server_cpu = -1;

static uint64_t spawn_once(char **argv, int port, uint64_t timeout_ns, long *early_errors)
{
    frame_t gr;
    build_getrandom(&gr);
    static uint8_t rsp[FRAME_MAX];

    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);

    /* The child inherits our CPU mask: switch to the server CPU around the
     * spawn (outside the timed region), then back. */
    cpu_set_t saved, want;
    if (g_server_cpu >= 0) {
        if (sched_getaffinity(0, sizeof saved, &saved) != 0)
            die("sched_getaffinity: %s", strerror(errno));
        CPU_ZERO(&want);
        CPU_SET(g_server_cpu, &want);
        if (sched_setaffinity(0, sizeof want, &want) != 0)
            die("sched_setaffinity(%d): %s", g_server_cpu, strerror(errno));
    }
    uint64_t t0 = now_ns();
    pid_t pid;
    int err = posix_spawn(&pid, argv[0], &fa, NULL, argv, environ);
    if (g_server_cpu >= 0 && sched_setaffinity(0, sizeof saved, &saved) != 0)
        die("sched_setaffinity: %s", strerror(errno));
    posix_spawn_file_actions_destroy(&fa);
    if (err != 0)
        die("posix_spawn %s: %s", argv[0], strerror(err));
    g_child = pid;

    int fd = -1;
    uint64_t t1 = 0;
    for (;;) {
        if (now_ns() - t0 > timeout_ns) {
            if (fd >= 0)
                close(fd);
            stop_child(pid);
            die("spawn: no valid response from %s within %.1f s", argv[0], (double)timeout_ns / 1e9);
        }
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid && (g_child = -1, 1))
            die("spawn: %s exited before answering (status 0x%x)", argv[0], st);
        if (fd < 0) {
            fd = try_connect(g_host, port);
            if (fd < 0) {
                sleep_us(100);
                continue;
            }
            struct timeval tv = { 1, 0 };
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        }
        ssize_t w = write(fd, gr.b, gr.n);
        ssize_t n = w == (ssize_t)gr.n ? read_frame(fd, rsp, sizeof rsp) : -1;
        if (n <= 0) { /* reset, EOF or timeout: reconnect */
            close(fd);
            fd = -1;
            sleep_us(100);
            continue;
        }
        if (get32(rsp + 6) == RC_SUCCESS && n == 44) {
            t1 = now_ns();
            break;
        }
        (*early_errors)++;
        sleep_us(100);
    }
    close(fd); /* client closes first: TIME_WAIT stays on our side */
    stop_child(pid);
    g_child = -1;
    return t1 - t0;
}

static int spawn_main(int argc, char **argv)
{
    int port = -1, fresh = 0;
    long repeat = 10, timeout_ms = 10000;
    int i;
    for (i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--")) {
            i++;
            break;
        } else if (!strcmp(argv[i], "--port") && i + 1 < argc)
            port = (int)parse_long(argv[++i], "--port");
        else if (!strcmp(argv[i], "--host") && i + 1 < argc)
            g_host = argv[++i];
        else if (!strcmp(argv[i], "--repeat") && i + 1 < argc)
            repeat = parse_long(argv[++i], "--repeat");
        else if (!strcmp(argv[i], "--timeout-ms") && i + 1 < argc)
            timeout_ms = parse_long(argv[++i], "--timeout-ms");
        else if (!strcmp(argv[i], "--fresh-state"))
            fresh = 1;
        else if (!strcmp(argv[i], "--server-cpu") && i + 1 < argc)
            g_server_cpu = (int)parse_long(argv[++i], "--server-cpu");
        else
            die("spawn: unknown argument '%s'", argv[i]);
    }
    int ncmd = argc - i;
    char **cmd = argv + i;
    if (port <= 0 || ncmd <= 0 || repeat <= 0)
        die("usage: tpmbench spawn --port P [--repeat R] [--fresh-state] [--server-cpu C] [--timeout-ms T] -- CMD ARGS...");

    int uses_dir = 0;
    for (int k = 0; k < ncmd; k++)
        if (strstr(cmd[k], "@STATEDIR@"))
            uses_dir = 1;

    uint64_t *t = calloc((size_t)repeat, sizeof *t);
    long early = 0;
    char *shared = NULL;
    if (uses_dir && !fresh) {
        shared = make_statedir();
        g_dirs[0] = shared;
        char **av = subst_argv(cmd, ncmd, shared);
        long dummy = 0;
        spawn_once(av, port, (uint64_t)timeout_ms * 1000000u, &dummy); /* creates the state */
        free_argv(av);
    }
    for (long r = 0; r < repeat; r++) {
        char *dir = uses_dir ? (fresh ? make_statedir() : shared) : NULL;
        if (dir && fresh)
            g_dirs[1] = dir;
        char **av = subst_argv(cmd, ncmd, dir);
        t[r] = spawn_once(av, port, (uint64_t)timeout_ms * 1000000u, &early);
        free_argv(av);
        if (dir && fresh) {
            g_dirs[1] = NULL;
            rm_tree_flat(dir);
            free(dir);
        }
    }
    if (shared) {
        g_dirs[0] = NULL;
        rm_tree_flat(shared);
        free(shared);
    }
    qsort(t, (size_t)repeat, sizeof *t, cmp_u64);
    printf("op=spawn repeat=%ld fresh_state=%d p50_ms=%.3f min_ms=%.3f max_ms=%.3f early_errors=%ld\n",
           repeat, fresh, pct_us(t, (size_t)repeat, 50) / 1000.0, (double)t[0] / 1e6,
           (double)t[repeat - 1] / 1e6, early);
    free(t);
    return 0;
}

/* ------------------------------------------------------------------ */
/* control channel (swtpm's ptm commands, §2 of PROTOCOL.md)           */

#define CTRL_INIT 0x02u
#define CTRL_GET_STATEBLOB 0x0cu
#define CTRL_SET_STATEBLOB 0x0du
#define CTRL_STOP 0x0eu
#define CTRL_RES_RETRY 0x800u

#define BLOB_PERMANENT 1u
#define BLOB_VOLATILE 2u
#define BLOB_SAVESTATE 3u

/* Control connections get a receive timeout so that a server that never
 * answers fails the run instead of hanging it (an INIT that rekeys takes
 * well under a second). */
static int ctrl_connect(int port)
{
    int fd = connect_or_die(g_host, port);
    struct timeval tv = { 30, 0 };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return fd;
}

static void read_exact(int fd, uint8_t *p, size_t n, const char *what)
{
    while (n > 0) {
        ssize_t r = read(fd, p, n);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            die("%s: reading the reply: %s", what, strerror(errno));
        }
        if (r == 0)
            die("%s: the server closed the control connection", what);
        p += r;
        n -= (size_t)r;
    }
}

/* Sends one control command (a single write: swtpm 0.7.1 does not keep
 * bytes of a command across reads) and returns the 4-byte result. */
static uint32_t ctrl_result(int fd, const uint8_t *req, size_t n, const char *what)
{
    write_all(fd, req, n);
    uint8_t r[4];
    read_exact(fd, r, 4, what);
    return get32(r);
}

static uint32_t ctrl_stop(int fd)
{
    uint8_t req[4];
    put32(req, CTRL_STOP);
    return ctrl_result(fd, req, sizeof req, "STOP");
}

static uint32_t ctrl_init(int fd, uint32_t flags)
{
    uint8_t req[8];
    put32(req, CTRL_INIT);
    put32(req + 4, flags);
    return ctrl_result(fd, req, sizeof req, "INIT");
}

typedef struct {
    uint8_t *b;
    size_t n, cap;
} blob_t;

/* GET_STATEBLOB(flags, type, offset 0).  Reply: result, flags, totlength,
 * length (be32 each), then `length` bytes (also sent with an error when the
 * TPM is running).  Returns the result; the data lands in *out. */
static uint32_t ctrl_get_blob(int fd, uint32_t flags, uint32_t type, blob_t *out)
{
    uint8_t req[16], hdr[16];
    put32(req, CTRL_GET_STATEBLOB);
    put32(req + 4, flags);
    put32(req + 8, type);
    put32(req + 12, 0);
    write_all(fd, req, sizeof req);
    read_exact(fd, hdr, 4, "GET_STATEBLOB");
    uint32_t res = get32(hdr);
    read_exact(fd, hdr + 4, 12, "GET_STATEBLOB");
    uint32_t tot = get32(hdr + 8), len = get32(hdr + 12);
    if (len != tot)
        die("GET_STATEBLOB type %u: totlength %u != length %u", type, tot, len);
    if (len > 64u << 20)
        die("GET_STATEBLOB type %u: implausible length %u", type, len);
    if (out->cap < len) {
        free(out->b);
        out->b = malloc(len);
        if (!out->b)
            die("out of memory");
        out->cap = len;
    }
    read_exact(fd, out->b, len, "GET_STATEBLOB");
    out->n = len;
    return res;
}

/* SET_STATEBLOB request (state_flags 0), built once, sent with one write. */
static blob_t build_set_blob(uint32_t type, const blob_t *data)
{
    blob_t r;
    r.n = r.cap = 16 + data->n;
    r.b = malloc(r.n);
    if (!r.b)
        die("out of memory");
    put32(r.b, CTRL_SET_STATEBLOB);
    put32(r.b + 4, 0);
    put32(r.b + 8, type);
    put32(r.b + 12, (uint32_t)data->n);
    memcpy(r.b + 16, data->b, data->n);
    return r;
}

static double pct_ms(const uint64_t *sorted, size_t n, double p) { return pct_us(sorted, n, p) / 1000.0; }

/* ------------------------------------------------------------------ */
/* rekey                                                               */

static int rekey_main(int argc, char **argv)
{
    int src = -1, dst = -1, dst_data = -1;
    long count = -1;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--src-ctrl") && i + 1 < argc)
            src = (int)parse_long(argv[++i], "--src-ctrl");
        else if (!strcmp(argv[i], "--dst-ctrl") && i + 1 < argc)
            dst = (int)parse_long(argv[++i], "--dst-ctrl");
        else if (!strcmp(argv[i], "--dst-data") && i + 1 < argc)
            dst_data = (int)parse_long(argv[++i], "--dst-data");
        else if (!strcmp(argv[i], "--host") && i + 1 < argc)
            g_host = argv[++i];
        else if (!strcmp(argv[i], "--count") && i + 1 < argc)
            count = parse_long(argv[++i], "--count");
        else
            die("rekey: unknown argument '%s'", argv[i]);
    }
    if (src <= 0 || dst <= 0 || count <= 0)
        die("usage: tpmbench rekey --src-ctrl P --dst-ctrl Q --count N [--dst-data D]");

    /* The source's blobs, once (GET_STATEBLOB with DECRYPTED, as QEMU). */
    blob_t perm = { 0 }, vol = { 0 };
    int sfd = ctrl_connect(src);
    uint32_t rc;
    if ((rc = ctrl_get_blob(sfd, 1, BLOB_PERMANENT, &perm)) != 0 || perm.n == 0)
        die("source GET_STATEBLOB permanent: result 0x%x, %zu bytes", rc, perm.n);
    if ((rc = ctrl_get_blob(sfd, 1, BLOB_VOLATILE, &vol)) != 0 || vol.n == 0)
        die("source GET_STATEBLOB volatile: result 0x%x, %zu bytes", rc, vol.n);
    close(sfd);
    blob_t set_perm = build_set_blob(BLOB_PERMANENT, &perm);
    blob_t set_vol = build_set_blob(BLOB_VOLATILE, &vol);

    static frames_t fr;
    static conn_t dc;
    build_all(&fr);
    uint64_t *t = calloc((size_t)count, sizeof *t), *tset = calloc((size_t)count, sizeof *t),
             *tinit = calloc((size_t)count, sizeof *t);
    if (!t || !tset || !tinit)
        die("out of memory");
    int fd = ctrl_connect(dst);
    for (long i = 0; i < count; i++) {
        if ((rc = ctrl_stop(fd)) != 0)
            die("clone %ld: STOP: result 0x%x", i + 1, rc);
        uint64_t t0 = now_ns();
        if ((rc = ctrl_result(fd, set_perm.b, set_perm.n, "SET_STATEBLOB")) != 0)
            die("clone %ld: SET_STATEBLOB permanent: result 0x%x", i + 1, rc);
        if ((rc = ctrl_result(fd, set_vol.b, set_vol.n, "SET_STATEBLOB")) != 0)
            die("clone %ld: SET_STATEBLOB volatile: result 0x%x", i + 1, rc);
        uint64_t t1 = now_ns();
        if ((rc = ctrl_init(fd, 1)) != 0)
            die("clone %ld: INIT(1): result 0x%x", i + 1, rc);
        uint64_t t2 = now_ns();
        t[i] = t2 - t0;
        tset[i] = t1 - t0;
        tinit[i] = t2 - t1;
        if (dst_data > 0) { /* the rekeyed TPM answers (untimed) */
            dc.fd = connect_or_die(g_host, dst_data);
            do_getrandom(&dc, &fr);
            close(dc.fd);
        }
    }
    close(fd);
    qsort(t, (size_t)count, sizeof *t, cmp_u64);
    qsort(tset, (size_t)count, sizeof *t, cmp_u64);
    qsort(tinit, (size_t)count, sizeof *t, cmp_u64);
    size_t n = (size_t)count;
    printf("op=rekey count=%ld p50_ms=%.2f p95_ms=%.2f max_ms=%.2f min_ms=%.2f set_p50_ms=%.2f "
           "init_p50_ms=%.2f perm_bytes=%zu vol_bytes=%zu\n",
           count, pct_ms(t, n, 50), pct_ms(t, n, 95), (double)t[n - 1] / 1e6, (double)t[0] / 1e6,
           pct_ms(tset, n, 50), pct_ms(tinit, n, 50), perm.n, vol.n);
    free(t);
    free(tset);
    free(tinit);
    free(perm.b);
    free(vol.b);
    free(set_perm.b);
    free(set_vol.b);
    return 0;
}

/* ------------------------------------------------------------------ */
/* savevm                                                              */

static int savevm_main(int argc, char **argv)
{
    int ctrl = -1, data = -1;
    long count = -1, warmup = 5;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--ctrl") && i + 1 < argc)
            ctrl = (int)parse_long(argv[++i], "--ctrl");
        else if (!strcmp(argv[i], "--data") && i + 1 < argc)
            data = (int)parse_long(argv[++i], "--data");
        else if (!strcmp(argv[i], "--host") && i + 1 < argc)
            g_host = argv[++i];
        else if (!strcmp(argv[i], "--count") && i + 1 < argc)
            count = parse_long(argv[++i], "--count");
        else if (!strcmp(argv[i], "--warmup") && i + 1 < argc)
            warmup = parse_long(argv[++i], "--warmup");
        else
            die("savevm: unknown argument '%s'", argv[i]);
    }
    if (ctrl <= 0 || data <= 0 || count <= 0)
        die("usage: tpmbench savevm --ctrl P --data D --count N [--warmup W]");

    static frames_t fr;
    static conn_t c;
    build_all(&fr);
    c.fd = connect_or_die(g_host, data);
    uint32_t startup_rc = do_startup(&c, &fr);
    /* Some state beyond a fresh TPM: an NV counter, a primary key created
     * and flushed, PCR 16 extended. */
    nv_define(&c, &fr);
    transact_ok(&c, &fr.nvinc);
    do_flush(&c, &fr, do_createprimary(&c, &fr));
    int fd = ctrl_connect(ctrl);

    uint64_t *t = calloc((size_t)count, sizeof *t), *tp = calloc((size_t)count, sizeof *t),
             *tv = calloc((size_t)count, sizeof *t), *ts = calloc((size_t)count, sizeof *t);
    if (!t || !tp || !tv || !ts)
        die("out of memory");
    blob_t perm = { 0 }, vol = { 0 }, save = { 0 };
    uint32_t rc, save_rc = 0;
    for (long i = 0; i < warmup + count; i++) {
        transact_ok(&c, &fr.pcrextend); /* the guest ran since the last savevm */
        uint64_t t0 = now_ns();
        if ((rc = ctrl_get_blob(fd, 1, BLOB_PERMANENT, &perm)) != 0 || perm.n == 0)
            die("round %ld: GET_STATEBLOB permanent: result 0x%x, %zu bytes", i + 1, rc, perm.n);
        uint64_t t1 = now_ns();
        if ((rc = ctrl_get_blob(fd, 1, BLOB_VOLATILE, &vol)) != 0 || vol.n == 0)
            die("round %ld: GET_STATEBLOB volatile: result 0x%x, %zu bytes", i + 1, rc, vol.n);
        uint64_t t2 = now_ns();
        save_rc = ctrl_get_blob(fd, 1, BLOB_SAVESTATE, &save);
        if ((save_rc != 0 && !(save_rc & CTRL_RES_RETRY)) || (save_rc != 0 && save.n != 0))
            die("round %ld: GET_STATEBLOB savestate: result 0x%x, %zu bytes", i + 1, save_rc, save.n);
        uint64_t t3 = now_ns();
        if (i >= warmup) {
            long k = i - warmup;
            t[k] = t3 - t0;
            tp[k] = t1 - t0;
            tv[k] = t2 - t1;
            ts[k] = t3 - t2;
        }
    }
    close(fd);
    transact_ok(&c, &fr.nvundef);
    close(c.fd);
    size_t n = (size_t)count;
    qsort(t, n, sizeof *t, cmp_u64);
    qsort(tp, n, sizeof *t, cmp_u64);
    qsort(tv, n, sizeof *t, cmp_u64);
    qsort(ts, n, sizeof *t, cmp_u64);
    printf("op=savevm count=%ld p50_us=%.1f p95_us=%.1f max_us=%.1f perm_p50_us=%.1f vol_p50_us=%.1f "
           "save_p50_us=%.1f perm_bytes=%zu vol_bytes=%zu save_rc=0x%x startup_rc=0x%03x\n",
           count, pct_us(t, n, 50), pct_us(t, n, 95), (double)t[n - 1] / 1000.0, pct_us(tp, n, 50),
           pct_us(tv, n, 50), pct_us(ts, n, 50), perm.n, vol.n, save_rc, startup_rc);
    free(t);
    free(tp);
    free(tv);
    free(ts);
    free(perm.b);
    free(vol.b);
    free(save.b);
    return 0;
}

/* ------------------------------------------------------------------ */
/* storm                                                               */

typedef struct {
    int data_port;
    int rounds;
    pthread_barrier_t *go;
    uint64_t *get_ns, *init_ns; /* 3 * rounds, rounds */
    int errors;
    char first_error[160];
} storm_vm_t;

static void storm_fail(storm_vm_t *vm, const char *what, uint32_t rc)
{
    if (vm->errors++ == 0)
        snprintf(vm->first_error, sizeof vm->first_error, "port %d: %s: result 0x%x", vm->data_port, what, rc);
}

static void *storm_thread(void *arg)
{
    storm_vm_t *vm = arg;
    frames_t fr;
    build_all(&fr);
    conn_t c = { 0 };
    c.fd = connect_or_die(g_host, vm->data_port);
    int fd = ctrl_connect(vm->data_port + 1);
    blob_t blobs[3] = { { 0 }, { 0 }, { 0 } };
    pthread_barrier_wait(vm->go);
    for (int r = 0; r < vm->rounds; r++) {
        do_getrandom(&c, &fr); /* the guest ran since the last savevm */
        for (uint32_t t = 0; t < 3; t++) {
            uint64_t t0 = now_ns();
            uint32_t rc = ctrl_get_blob(fd, 1, t + 1, &blobs[t]);
            vm->get_ns[r * 3 + (int)t] = now_ns() - t0;
            /* the savestate blob is empty (and refused) unless the TPM was suspended */
            if (rc != 0 && !(t + 1 == BLOB_SAVESTATE && blobs[t].n == 0))
                storm_fail(vm, "GET_STATEBLOB", rc);
        }
        uint32_t rc = ctrl_stop(fd);
        if (rc != 0)
            storm_fail(vm, "STOP", rc);
        for (uint32_t t = 0; t < 3; t++) {
            if (blobs[t].n == 0)
                continue;
            blob_t set = build_set_blob(t + 1, &blobs[t]);
            if ((rc = ctrl_result(fd, set.b, set.n, "SET_STATEBLOB")) != 0)
                storm_fail(vm, "SET_STATEBLOB", rc);
            free(set.b);
        }
        uint64_t t0 = now_ns();
        rc = ctrl_init(fd, 1);
        vm->init_ns[r] = now_ns() - t0;
        if (rc != 0)
            storm_fail(vm, "INIT", rc);
    }
    close(fd);
    close(c.fd);
    for (int t = 0; t < 3; t++)
        free(blobs[t].b);
    return NULL;
}

typedef struct {
    int port;
    volatile int *stop;
    uint64_t *ns;
    size_t n, cap;
    int errors;
} bystander_t;

static void *bystander_thread(void *arg)
{
    bystander_t *b = arg;
    frames_t fr;
    build_all(&fr);
    conn_t c = { 0 };
    c.fd = connect_or_die(g_host, b->port);
    while (!__atomic_load_n(b->stop, __ATOMIC_RELAXED)) {
        uint64_t t0 = now_ns();
        if (transact(&c, &fr.getrandom) != 0)
            b->errors++;
        if (b->n < b->cap)
            b->ns[b->n++] = now_ns() - t0;
        sleep_us(2000);
    }
    close(c.fd);
    return NULL;
}

static int storm_main(int argc, char **argv)
{
    const char *ports = NULL;
    int bystander = -1;
    long rounds = 2;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--ports") && i + 1 < argc)
            ports = argv[++i];
        else if (!strcmp(argv[i], "--bystander") && i + 1 < argc)
            bystander = (int)parse_long(argv[++i], "--bystander");
        else if (!strcmp(argv[i], "--rounds") && i + 1 < argc)
            rounds = parse_long(argv[++i], "--rounds");
        else if (!strcmp(argv[i], "--host") && i + 1 < argc)
            g_host = argv[++i];
        else
            die("storm: unknown argument '%s'", argv[i]);
    }
    if (!ports || bystander <= 0 || rounds <= 0)
        die("usage: tpmbench storm --ports P1,P2,... --bystander B [--rounds R]");
    size_t nvm = 1;
    for (const char *p = ports; *p; p++)
        nvm += *p == ',';
    storm_vm_t *vms = calloc(nvm, sizeof *vms);
    pthread_t *threads = calloc(nvm, sizeof *threads);
    if (!vms || !threads)
        die("out of memory");
    pthread_barrier_t go;
    pthread_barrier_init(&go, NULL, (unsigned)nvm + 1);
    char *list = strdup(ports), *save = NULL;
    size_t k = 0;
    for (char *tok = strtok_r(list, ",", &save); tok && k < nvm; tok = strtok_r(NULL, ",", &save), k++) {
        vms[k].data_port = (int)parse_long(tok, "--ports");
        vms[k].rounds = (int)rounds;
        vms[k].go = &go;
        vms[k].get_ns = calloc((size_t)rounds * 3, sizeof(uint64_t));
        vms[k].init_ns = calloc((size_t)rounds, sizeof(uint64_t));
        if (!vms[k].get_ns || !vms[k].init_ns)
            die("out of memory");
    }
    if (k != nvm)
        die("storm: bad --ports list");
    volatile int stop = 0;
    bystander_t by = { .port = bystander, .stop = &stop, .cap = 1u << 20 };
    by.ns = calloc(by.cap, sizeof *by.ns);
    if (!by.ns)
        die("out of memory");
    pthread_t by_thread;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    for (size_t i = 0; i < nvm; i++)
        if (pthread_create(&threads[i], &attr, storm_thread, &vms[i]) != 0)
            die("pthread_create: %s", strerror(errno));
    if (pthread_create(&by_thread, &attr, bystander_thread, &by) != 0)
        die("pthread_create: %s", strerror(errno));
    sleep_us(100000); /* the bystander has answered a few before the storm */
    uint64_t t0 = now_ns();
    pthread_barrier_wait(&go);
    for (size_t i = 0; i < nvm; i++)
        pthread_join(threads[i], NULL);
    uint64_t t1 = now_ns();
    __atomic_store_n(&stop, 1, __ATOMIC_RELAXED);
    pthread_join(by_thread, NULL);

    size_t ng = nvm * (size_t)rounds * 3, ni = nvm * (size_t)rounds;
    uint64_t *g = calloc(ng, sizeof *g), *in = calloc(ni, sizeof *in);
    if (!g || !in)
        die("out of memory");
    int errors = by.errors;
    for (size_t i = 0; i < nvm; i++) {
        memcpy(g + i * (size_t)rounds * 3, vms[i].get_ns, (size_t)rounds * 3 * sizeof *g);
        memcpy(in + i * (size_t)rounds, vms[i].init_ns, (size_t)rounds * sizeof *in);
        if (vms[i].errors) {
            if (errors == by.errors)
                fprintf(stderr, "storm: %s\n", vms[i].first_error);
            errors += vms[i].errors;
        }
    }
    qsort(g, ng, sizeof *g, cmp_u64);
    qsort(in, ni, sizeof *in, cmp_u64);
    qsort(by.ns, by.n, sizeof *by.ns, cmp_u64);
    printf("op=storm vms=%zu rounds=%ld errors=%d seconds=%.2f get_p50_ms=%.2f get_p99_ms=%.2f init_p50_ms=%.2f "
           "init_p99_ms=%.2f by_p50_us=%.1f by_p99_us=%.1f by_max_us=%.1f by_count=%zu\n",
           nvm, rounds, errors, (double)(t1 - t0) / 1e9, pct_ms(g, ng, 50), pct_ms(g, ng, 99), pct_ms(in, ni, 50),
           pct_ms(in, ni, 99), pct_us(by.ns, by.n, 50), pct_us(by.ns, by.n, 99),
           by.n ? (double)by.ns[by.n - 1] / 1000.0 : 0.0, by.n);
    return errors ? 1 : 0;
}

/* ------------------------------------------------------------------ */
/* floor server                                                        */

static int floor_main(int argc, char **argv)
{
    int port = -1;
    const char *bind_addr = "127.0.0.1";
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--port") && i + 1 < argc)
            port = (int)parse_long(argv[++i], "--port");
        else if (!strcmp(argv[i], "--bind") && i + 1 < argc)
            bind_addr = argv[++i];
        else
            die("floor-server: unknown argument '%s'", argv[i]);
    }
    if (port <= 0)
        die("usage: tpmbench floor-server --port P [--bind ADDR]");
    signal(SIGPIPE, SIG_IGN);

    /* Canned responses, built once. */
    static uint8_t ok10[10], rand44[44], prim14[14];
    put16(ok10, ST_NO_SESSIONS);
    put32(ok10 + 2, 10);
    put32(ok10 + 6, 0);
    put16(rand44, ST_NO_SESSIONS);
    put32(rand44 + 2, 44);
    put32(rand44 + 6, 0);
    put16(rand44 + 10, 32);
    for (int i = 0; i < 32; i++)
        rand44[12 + i] = (uint8_t)(i * 37 + 11);
    put16(prim14, ST_SESSIONS);
    put32(prim14 + 2, 14);
    put32(prim14 + 6, 0);
    put32(prim14 + 10, 0x80000000u);

    struct sockaddr_in sa;
    make_addr(&sa, bind_addr, port);
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (ls < 0)
        die("socket: %s", strerror(errno));
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(ls, (struct sockaddr *)&sa, sizeof sa) != 0)
        die("bind %s:%d: %s", bind_addr, port, strerror(errno));
    if (listen(ls, 8) != 0)
        die("listen: %s", strerror(errno));

    static uint8_t buf[FRAME_MAX];
    for (;;) {
        int fd = accept4(ls, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            die("accept: %s", strerror(errno));
        }
        set_nodelay(fd);
        size_t have = 0;
        for (;;) {
            /* Collect one complete frame (keeping any pipelined excess). */
            size_t want = 10;
            int eof = 0;
            for (;;) {
                if (have >= 10) {
                    want = get32(buf + 2);
                    if (want < 10 || want > sizeof buf) {
                        eof = 1; /* garbage: drop the client */
                        break;
                    }
                    if (have >= want)
                        break;
                }
                ssize_t r = read(fd, buf + have, sizeof buf - have);
                if (r <= 0) {
                    if (r < 0 && errno == EINTR)
                        continue;
                    eof = 1;
                    break;
                }
                have += (size_t)r;
            }
            if (eof)
                break;
            const uint8_t *resp = ok10;
            size_t rlen = sizeof ok10;
            uint32_t cc = get32(buf + 6);
            if (cc == CC_GetRandom) {
                resp = rand44;
                rlen = sizeof rand44;
            } else if (cc == CC_CreatePrimary) {
                resp = prim14;
                rlen = sizeof prim14;
            }
            ssize_t w = write(fd, resp, rlen);
            if (w != (ssize_t)rlen)
                break;
            have -= want;
            if (have)
                memmove(buf, buf + want, have);
        }
        close(fd);
    }
}

/* ------------------------------------------------------------------ */

static void usage(void)
{
    fprintf(stderr,
            "usage:\n"
            "  tpmbench cmd   --port P --op getrandom|pcrextend|createprimary|nvincrement --count N [--warmup W]\n"
            "  tpmbench rss   --port P [--count 10000]\n"
            "  tpmbench spawn --port P [--repeat R] [--fresh-state] [--server-cpu C] [--timeout-ms T] -- CMD ARGS... (@STATEDIR@ is substituted)\n"
            "  tpmbench rekey  --src-ctrl P --dst-ctrl Q --count N [--dst-data D]\n"
            "  tpmbench savevm --ctrl P --data D --count N [--warmup W]\n"
            "  tpmbench storm  --ports P1,P2,... --bystander B [--rounds R]\n"
            "  tpmbench floor-server --port P [--bind 127.0.0.1]\n"
            "common: --host ADDR (default 127.0.0.1)\n");
    exit(2);
}

int main(int argc, char **argv)
{
    if (argc < 2)
        usage();
    signal(SIGPIPE, SIG_IGN);
    setvbuf(stdout, NULL, _IOLBF, 0);
    const char *sub = argv[1];
    if (!strcmp(sub, "cmd"))
        return cmd_main(argc - 2, argv + 2);
    if (!strcmp(sub, "rss"))
        return rss_main(argc - 2, argv + 2);
    if (!strcmp(sub, "spawn"))
        return spawn_main(argc - 2, argv + 2);
    if (!strcmp(sub, "rekey"))
        return rekey_main(argc - 2, argv + 2);
    if (!strcmp(sub, "savevm"))
        return savevm_main(argc - 2, argv + 2);
    if (!strcmp(sub, "storm"))
        return storm_main(argc - 2, argv + 2);
    if (!strcmp(sub, "floor-server"))
        return floor_main(argc - 2, argv + 2);
    usage();
}
