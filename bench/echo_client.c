/*
 * echo_client: closed-loop TCP echo load generator for bench/echo.py.
 *
 *   echo_client HOST PORT CONNECTIONS SIZE WARMUP_SECONDS SECONDS
 *
 * Opens CONNECTIONS non-blocking sockets to HOST:PORT (IPv4). Each one sends SIZE bytes,
 * waits until all SIZE bytes have come back (checking them), and starts again: ping-pong,
 * one message in flight per connection. After WARMUP_SECONDS the round-trip counter is
 * reset; after SECONDS more the program prints one line and exits:
 *
 *   roundtrips=N seconds=T cpu=C
 *
 * T is the measured wall time, C the CPU seconds this process used during it (if C is
 * close to T the client, not the server, may be the bottleneck).
 *
 * Single-threaded on purpose: one epoll loop on one core can drive far more round trips
 * than a single-core Python server can answer. Level-triggered epoll: a connection waits
 * for EPOLLIN only, and asks for EPOLLOUT just while a send is partial.
 *
 * Any error (refused connection, server closing a connection, wrong bytes echoed) ends
 * the run with a one-line message on stderr and exit status 2.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define CONNECT_TIMEOUT 10.0
#define MAX_EVENTS 256

struct conn {
    int fd;
    int connected;
    int want_out;      /* EPOLLOUT currently in the interest set */
    size_t sent;       /* bytes of the current message written */
    size_t rcvd;       /* bytes of the current message echoed back */
};

static struct conn *conns;
static int nconns;
static size_t size;
static unsigned char *payload, *scratch;
static int ep;
static unsigned long long roundtrips;

static void die(const char *fmt, ...)
{
    va_list ap;
    fputs("echo_client: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(2);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void set_interest(struct conn *c, int want_out)
{
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | (want_out ? EPOLLOUT : 0)};
    ev.data.u32 = (uint32_t)(c - conns);
    if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) < 0)
        die("epoll_ctl: %s", strerror(errno));
    c->want_out = want_out;
}

/* Write as much of the current message as the socket takes. */
static void try_send(struct conn *c)
{
    while (c->sent < size) {
        ssize_t k = send(c->fd, payload + c->sent, size - c->sent, MSG_NOSIGNAL);
        if (k > 0) {
            c->sent += (size_t)k;
        } else if (k < 0 && errno == EINTR) {
            continue;
        } else if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (!c->want_out)
                set_interest(c, 1);
            return;
        } else {
            die("connection %ld: send failed: %s (server closed the connection? after %llu round trips)",
                (long)(c - conns), k < 0 ? strerror(errno) : "wrote 0 bytes", roundtrips);
        }
    }
    if (c->want_out)
        set_interest(c, 0);
}

static void on_readable(struct conn *c)
{
    ssize_t k = recv(c->fd, scratch, size - c->rcvd, 0);
    if (k < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return;
        die("connection %ld: recv failed: %s", (long)(c - conns), strerror(errno));
    }
    if (k == 0)
        die("connection %ld: server closed the connection (after %llu round trips)",
            (long)(c - conns), roundtrips);
    if (c->rcvd + (size_t)k > c->sent)
        die("connection %ld: server sent bytes that were never sent to it", (long)(c - conns));
    if (memcmp(scratch, payload + c->rcvd, (size_t)k) != 0)
        die("connection %ld: echoed bytes differ from the bytes sent", (long)(c - conns));
    c->rcvd += (size_t)k;
    if (c->rcvd == size) {
        roundtrips++;
        c->sent = c->rcvd = 0;
        try_send(c);
    }
}

static void on_connected(struct conn *c, const char *host, int port)
{
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        err = errno;
    if (err)
        die("connect to %s:%d failed: %s", host, port, strerror(err));
    c->connected = 1;
    try_send(c);
}

static long parse_long(const char *s, const char *what, long lo, long hi)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || end == s || v < lo || v > hi)
        die("bad %s %s (want %ld..%ld)", what, s, lo, hi);
    return v;
}

static double parse_seconds(const char *s, const char *what)
{
    char *end;
    double v = strtod(s, &end);
    if (*end || end == s || !(v >= 0.0 && v <= 3600.0))
        die("bad %s %s (want 0..3600)", what, s);
    return v;
}

int main(int argc, char **argv)
{
    if (argc != 7) {
        fprintf(stderr, "usage: %s HOST PORT CONNECTIONS SIZE WARMUP_SECONDS SECONDS\n", argv[0]);
        return 2;
    }
    const char *host = argv[1];
    int port = (int)parse_long(argv[2], "port", 1, 65535);
    nconns = (int)parse_long(argv[3], "connection count", 1, 100000);
    size = (size_t)parse_long(argv[4], "message size", 1, 64L << 20);
    double warmup = parse_seconds(argv[5], "warm-up");
    double seconds = parse_seconds(argv[6], "duration");
    if (seconds <= 0)
        die("duration must be > 0");

    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1)
        die("bad IPv4 address %s", host);

    payload = malloc(size);
    scratch = malloc(size);
    conns = calloc((size_t)nconns, sizeof *conns);
    if (!payload || !scratch || !conns)
        die("out of memory");
    for (size_t i = 0; i < size; i++)
        payload[i] = (unsigned char)(i * 131 + 7);

    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        die("epoll_create1: %s", strerror(errno));

    for (int i = 0; i < nconns; i++) {
        struct conn *c = &conns[i];
        c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (c->fd < 0)
            die("socket: %s (raise the open-files limit for this many connections)", strerror(errno));
        int one = 1;
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS)
            die("connect to %s:%d failed: %s", host, port, strerror(errno));
        /* Wait for EPOLLOUT: that is how a non-blocking connect reports completion. */
        struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP};
        ev.data.u32 = (uint32_t)i;
        if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0)
            die("epoll_ctl: %s", strerror(errno));
        c->want_out = 1;
    }

    enum { CONNECTING, WARMUP, MEASURE } phase = CONNECTING;
    double t = now();
    double deadline = t + CONNECT_TIMEOUT; /* end of the current phase */
    double measure_start = 0, cpu_start = 0;
    int nconnected = 0;
    struct epoll_event events[MAX_EVENTS];

    for (;;) {
        t = now();
        if (phase == CONNECTING && nconnected == nconns) {
            phase = WARMUP;
            deadline = t + warmup;
        }
        if (t >= deadline) {
            if (phase == CONNECTING)
                die("only %d of %d connections to %s:%d were established within %.0fs",
                    nconnected, nconns, host, port, CONNECT_TIMEOUT);
            if (phase == MEASURE)
                break;
            phase = MEASURE;
            roundtrips = 0;
            measure_start = t;
            cpu_start = cpu_now();
            deadline = t + seconds;
        }
        int timeout_ms = (int)((deadline - t) * 1000.0) + 1;
        int n = epoll_wait(ep, events, MAX_EVENTS, timeout_ms);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait: %s", strerror(errno));
        }
        for (int i = 0; i < n; i++) {
            struct conn *c = &conns[events[i].data.u32];
            uint32_t e = events[i].events;
            if (!c->connected) {
                if (e & (EPOLLOUT | EPOLLERR | EPOLLHUP)) {
                    on_connected(c, host, port);
                    nconnected++;
                }
                continue;
            }
            if (e & EPOLLOUT)
                try_send(c);
            if (e & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
                on_readable(c);
        }
    }

    double elapsed = now() - measure_start;
    double cpu = cpu_now() - cpu_start;
    printf("roundtrips=%llu seconds=%.6f cpu=%.6f\n", roundtrips, elapsed, cpu);
    fflush(stdout);
    return 0;
}
