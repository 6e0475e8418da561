/* The IRC load generator of bench/chat.py, in C: one process drives a share of the clients on epoll.

   chat_load PORT CLIENTS CHANNELS RATE SECONDS TAG SEED FIRST STEP REGISTER_SECONDS

   Clients FIRST, FIRST+STEP, ... (< CLIENTS) connect to 127.0.0.1:PORT, register (NICK/USER, wait for
   001; PING is answered with PONG at any time) and JOIN #TAG<i % CHANNELS>; at most 8 are between
   connect and 001 at once (ngircd listens with a backlog of 10). Then, on stdin/stdout with the parent:

     -> ready JOINED SECONDS_TAKEN JOIN_ERRORS  and a line "member CH N" per channel
     <- go T0_NS                      (CLOCK_MONOTONIC, the same clock for every process)
        every joined client sends PRIVMSG to its channel RATE times a second from T0 for SECONDS, the
        first at a phase drawn from SEED (the same phases for every server of a run); a line that is
        late is still sent, late. Each line carries "<send ns> <sender> <seq> " and filler, 64 bytes.
     <- drain                          (the parent's drain is over)
     -> sent CH N (per channel), then counters, latency and lateness histograms, "end"
     <- release                        (the parent sampled the server's memory; hang up)

   Receiving is what costs: the latency of a delivery is taken when the chunk holding it is read, and
   the line is parsed in place (no copies). Why C: at 8,000 messages a second the 500 clients receive
   392,000 lines a second, which the Python generator could only just read on the two cores it shares
   with the server, so the latency it measured was partly its own. */

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>

#define TEXT_LEN 64
#define RBUF (256 * 1024)
#define WBUF 16384
#define CONCURRENT 8
#define HBUCKETS 200000  /* 10 us buckets up to 1 s, then 1 ms buckets up to 100 s */

static const char FILLER[] = "socketkit-chat-bench-socketkit-chat-bench-socketkit-chat-bench-socketkit-chat-bench-";

enum { S_IDLE, S_CONNECTING, S_REGISTERING, S_JOINING, S_JOINED, S_CLOSED };

typedef struct {
    int fd, index, state, channel;
    char *rbuf;
    int rlen;
    char wbuf[WBUF];
    int wlen;
    int64_t next_ns;   /* next scheduled send */
    int64_t seq;
    int32_t *last_seq; /* per sender: last sequence number seen */
    int measuring_disconnect;
} client_t;

static int port, nclients, nchannels, first, step, nmine;
static double rate, seconds, register_seconds;
static char tag[32];
static uint64_t seed;
static client_t *clients;
static int epfd;
static int measuring;
static uint64_t deliveries, out_of_order, garbled, notices, disconnects, join_errors;
static uint64_t lat_hist[HBUCKETS], late_hist[HBUCKETS];
static uint64_t *sent_per_channel;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void hist_add(uint64_t *h, int64_t ns) {
    if (ns < 0) ns = 0;
    int64_t us = ns / 1000;
    int64_t b = us < 1000000 ? us / 10 : 100000 + (us - 1000000) / 1000;
    if (b >= HBUCKETS) b = HBUCKETS - 1;
    h[b]++;
}

static uint64_t splitmix(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static void queue_write(client_t *c, const char *data, int len) {
    if (c->state == S_CLOSED) return;
    if (c->wlen == 0) {
        ssize_t n = send(c->fd, data, len, MSG_NOSIGNAL);
        if (n == len) return;
        if (n < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK) return; /* the read side notices the loss */
            n = 0;
        }
        data += n;
        len -= (int)n;
        struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
        epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
    }
    if (c->wlen + len > WBUF) len = WBUF - c->wlen; /* the server stopped reading us: drop the excess */
    memcpy(c->wbuf + c->wlen, data, len);
    c->wlen += len;
}

static void flush_writes(client_t *c) {
    while (c->wlen > 0) {
        ssize_t n = send(c->fd, c->wbuf, c->wlen, MSG_NOSIGNAL);
        if (n <= 0) return;
        memmove(c->wbuf, c->wbuf + n, c->wlen - n);
        c->wlen -= (int)n;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

static int registering;

static void close_client(client_t *c) {
    if (c->state == S_CLOSED) return;
    if (c->state == S_JOINED && measuring) disconnects++;
    if (c->state == S_CONNECTING || c->state == S_REGISTERING) registering--;
    if (c->state != S_JOINED) join_errors++;
    c->state = S_CLOSED;
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
}

static void start_connect(client_t *c) {
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connect(c->fd, (struct sockaddr *)&sa, sizeof sa);
    c->state = S_CONNECTING;
    registering++;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev);
}

static long parse_long(const char **p, const char *end) {
    long v = 0;
    const char *q = *p;
    if (q >= end || *q < '0' || *q > '9') return -1;
    while (q < end && *q >= '0' && *q <= '9') v = v * 10 + (*q++ - '0');
    if (q >= end || *q != ' ') return -1;
    *p = q + 1;
    return v;
}

/* One line (without CRLF) from the server. */
static void handle_line(client_t *c, const char *line, int len, int64_t now) {
    const char *end = line + len;
    const char *p = line;
    if (len && *p == '@') { /* tags */
        p = memchr(p, ' ', len);
        if (!p) return;
        p++;
    }
    const char *src = NULL;
    int srclen = 0;
    if (p < end && *p == ':') {
        const char *sp = memchr(p, ' ', end - p);
        if (!sp) return;
        src = p + 1;
        srclen = (int)(sp - src);
        p = sp + 1;
    }
    const char *cmd = p;
    const char *sp = memchr(p, ' ', end - p);
    int cmdlen = sp ? (int)(sp - p) : (int)(end - p);
    if (cmdlen == 7 && memcmp(cmd, "PRIVMSG", 7) == 0 && sp) {
        if (!measuring) return;
        const char *text = memmem(sp, end - sp, " :", 2);
        if (!text) { garbled++; return; }
        text += 2;
        long ts = parse_long(&text, end), sender = parse_long(&text, end), seqn = parse_long(&text, end);
        if (ts < 0 || sender < 0 || seqn < 0 || sender >= nclients) { garbled++; return; }
        deliveries++;
        hist_add(lat_hist, now - ts);
        if ((int32_t)seqn <= c->last_seq[sender]) out_of_order++;
        else c->last_seq[sender] = (int32_t)seqn;
        return;
    }
    if (cmdlen == 4 && memcmp(cmd, "PING", 4) == 0) {
        char buf[600];
        int n = snprintf(buf, sizeof buf, "PONG%.*s\r\n", (int)(end - (cmd + 4)), cmd + 4);
        if (n > 0 && n < (int)sizeof buf) queue_write(c, buf, n);
        return;
    }
    if (cmdlen == 3 && memcmp(cmd, "001", 3) == 0 && c->state == S_REGISTERING) {
        char buf[128];
        int n = snprintf(buf, sizeof buf, "JOIN #%s%d\r\n", tag, c->channel);
        queue_write(c, buf, n);
        c->state = S_JOINING;
        registering--;
        return;
    }
    if (c->state == S_JOINING && ((cmdlen == 3 && memcmp(cmd, "366", 3) == 0) ||
                                  (cmdlen == 4 && memcmp(cmd, "JOIN", 4) == 0 && src))) {
        if (cmd[0] == 'J') {
            char nick[64];
            int n = snprintf(nick, sizeof nick, "%s%d!", tag, c->index);
            if (srclen < n || memcmp(src, nick, n) != 0) return;
        }
        c->state = S_JOINED;
        return;
    }
    if (c->state == S_JOINED && measuring) {
        if ((cmdlen == 6 && memcmp(cmd, "NOTICE", 6) == 0) ||
            (cmdlen == 3 && (cmd[0] == '4' || cmd[0] == '5')))
            notices++;
    } else if (c->state != S_JOINED && cmdlen == 3 && (cmd[0] == '4' || cmd[0] == '5')) {
        close_client(c);
    }
}

static void on_readable(client_t *c) {
    for (;;) {
        ssize_t n = recv(c->fd, c->rbuf + c->rlen, RBUF - c->rlen, 0);
        if (n == 0) { close_client(c); return; }
        if (n < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK) close_client(c);
            return;
        }
        int64_t now = now_ns();
        c->rlen += (int)n;
        char *p = c->rbuf, *end = c->rbuf + c->rlen;
        for (;;) {
            char *nl = memchr(p, '\n', end - p);
            if (!nl) break;
            int len = (int)(nl - p);
            if (len && p[len - 1] == '\r') len--;
            handle_line(c, p, len, now);
            if (c->state == S_CLOSED) return;
            p = nl + 1;
        }
        c->rlen = (int)(end - p);
        if (c->rlen == RBUF) c->rlen = 0; /* a line longer than the buffer: not ours, dropped */
        memmove(c->rbuf, p, c->rlen);
        if (n < RBUF / 2) return;
    }
}

static void on_event(client_t *c, uint32_t events) {
    if (c->state == S_CONNECTING) {
        int err = 0;
        socklen_t l = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
        if (err) { close_client(c); return; }
        c->state = S_REGISTERING;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
        char buf[200];
        int n = snprintf(buf, sizeof buf, "NICK %s%d\r\nUSER %s%d 0 * :socketkit bench\r\n", tag, c->index, tag,
                         c->index);
        queue_write(c, buf, n);
        return;
    }
    if (events & EPOLLOUT) flush_writes(c);
    if (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) on_readable(c);
}

static void poll_once(int timeout_ms) {
    struct epoll_event evs[256];
    int n = epoll_wait(epfd, evs, 256, timeout_ms);
    for (int i = 0; i < n; i++) on_event(evs[i].data.ptr, evs[i].events);
}

static int read_command(char *buf, int size) {
    /* stdin is a pipe from the parent: one line */
    int len = 0;
    while (len < size - 1) {
        ssize_t n = read(0, buf + len, 1);
        if (n <= 0) return -1;
        if (buf[len] == '\n') break;
        len++;
    }
    buf[len] = 0;
    return len;
}

static void print_hist(const char *name, uint64_t *h) {
    for (int i = 0; i < HBUCKETS; i++)
        if (h[i]) printf("%s %d %llu\n", name, i, (unsigned long long)h[i]);
}

int main(int argc, char **argv) {
    if (argc != 11) {
        fprintf(stderr, "usage: chat_load PORT CLIENTS CHANNELS RATE SECONDS TAG SEED FIRST STEP REGISTER_SECONDS\n");
        return 2;
    }
    port = atoi(argv[1]);
    nclients = atoi(argv[2]);
    nchannels = atoi(argv[3]);
    rate = atof(argv[4]);
    seconds = atof(argv[5]);
    snprintf(tag, sizeof tag, "%s", argv[6]);
    seed = strtoull(argv[7], NULL, 10);
    first = atoi(argv[8]);
    step = atoi(argv[9]);
    register_seconds = atof(argv[10]);
    setvbuf(stdout, NULL, _IOFBF, 1 << 16);
    epfd = epoll_create1(0);
    nmine = 0;
    for (int i = first; i < nclients; i += step) nmine++;
    clients = calloc(nmine, sizeof(client_t));
    sent_per_channel = calloc(nchannels, sizeof(uint64_t));
    for (int k = 0, i = first; i < nclients; i += step, k++) {
        clients[k].index = i;
        clients[k].channel = i % nchannels;
        clients[k].state = S_IDLE;
        clients[k].rbuf = malloc(RBUF);
        clients[k].last_seq = malloc(sizeof(int32_t) * nclients);
        for (int j = 0; j < nclients; j++) clients[k].last_seq[j] = -1;
    }

    /* register and join, CONCURRENT at a time until 001 */
    int64_t t_start = now_ns(), deadline = t_start + (int64_t)(register_seconds * 1e9);
    int next = 0;
    for (;;) {
        while (registering < CONCURRENT && next < nmine) start_connect(&clients[next++]);
        int pending = 0;
        for (int k = 0; k < nmine; k++)
            if (clients[k].state != S_JOINED && clients[k].state != S_CLOSED) pending++;
        if (!pending && next >= nmine) break;
        if (now_ns() > deadline) {
            for (int k = 0; k < nmine; k++)
                if (clients[k].state != S_JOINED) close_client(&clients[k]);
            break;
        }
        poll_once(10);
    }
    int joined = 0;
    uint64_t *members = calloc(nchannels, sizeof(uint64_t));
    for (int k = 0; k < nmine; k++)
        if (clients[k].state == S_JOINED) { joined++; members[clients[k].channel]++; }
    printf("ready %d %.3f %llu\n", joined, (now_ns() - t_start) / 1e9, (unsigned long long)join_errors);
    for (int ch = 0; ch < nchannels; ch++) printf("member %d %llu\n", ch, (unsigned long long)members[ch]);
    fflush(stdout);

    /* wait for "go T0", reading the server meanwhile (PINGs, others' JOINs) */
    char cmd[256];
    fcntl(0, F_SETFL, 0);
    struct epoll_event sev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(epfd, EPOLL_CTL_ADD, 0, &sev);
    int64_t t0 = 0;
    while (!t0) {
        struct epoll_event evs[256];
        int n = epoll_wait(epfd, evs, 256, 100);
        for (int i = 0; i < n; i++) {
            if (evs[i].data.ptr == NULL) {
                if (read_command(cmd, sizeof cmd) < 0) return 1;
                if (strncmp(cmd, "go ", 3) == 0) t0 = strtoll(cmd + 3, NULL, 10);
                else return 0; /* stop */
            } else {
                on_event(evs[i].data.ptr, evs[i].events);
            }
        }
    }

    /* the send window, then the drain until the parent says it is over */
    int64_t period = (int64_t)(1e9 / rate), end_ns = t0 + (int64_t)(seconds * 1e9);
    uint64_t rng = seed;
    int64_t *phase = malloc(sizeof(int64_t) * nclients);
    for (int i = 0; i < nclients; i++) phase[i] = (int64_t)(splitmix(&rng) % (uint64_t)period);
    for (int k = 0; k < nmine; k++) clients[k].next_ns = t0 + phase[clients[k].index];
    measuring = 1;
    struct rusage ru0, ru1;
    getrusage(RUSAGE_SELF, &ru0);
    int64_t w0 = now_ns();
    int draining = 0;
    char line[256];
    for (;;) {
        int64_t now = now_ns(), soonest = INT64_MAX;
        if (!draining) {
            for (int k = 0; k < nmine; k++) {
                client_t *c = &clients[k];
                if (c->state != S_JOINED) continue;
                while (c->next_ns < end_ns && c->next_ns <= now) {
                    hist_add(late_hist, now - c->next_ns);
                    int n = snprintf(line, sizeof line, "PRIVMSG #%s%d :%lld %d %lld ", tag, c->channel,
                                     (long long)now, c->index, (long long)c->seq);
                    int text = n - (int)(strchr(line, ':') - line) - 1;
                    int pad = TEXT_LEN - text;
                    if (pad > 0) { memcpy(line + n, FILLER, pad); n += pad; }
                    line[n++] = '\r';
                    line[n++] = '\n';
                    queue_write(c, line, n);
                    sent_per_channel[c->channel]++;
                    c->seq++;
                    c->next_ns = t0 + phase[c->index] + c->seq * period;
                    now = now_ns();
                }
                if (c->next_ns < end_ns && c->next_ns < soonest) soonest = c->next_ns;
            }
        }
        int timeout = 100;
        if (soonest != INT64_MAX) {
            int64_t wait = soonest - now_ns();
            timeout = wait <= 0 ? 0 : (int)((wait + 999999) / 1000000);
            if (timeout > 100) timeout = 100;
        }
        struct epoll_event evs[256];
        int n = epoll_wait(epfd, evs, 256, timeout);
        int done = 0;
        for (int i = 0; i < n; i++) {
            if (evs[i].data.ptr == NULL) {
                if (read_command(cmd, sizeof cmd) < 0) return 1;
                if (strcmp(cmd, "drain") == 0) done = 1;
            } else {
                on_event(evs[i].data.ptr, evs[i].events);
            }
        }
        if (done) break;
        if (!draining && now_ns() >= end_ns) draining = 1;
    }
    measuring = 0;
    getrusage(RUSAGE_SELF, &ru1);
    double cpu = (ru1.ru_utime.tv_sec - ru0.ru_utime.tv_sec) + (ru1.ru_utime.tv_usec - ru0.ru_utime.tv_usec) / 1e6 +
                 (ru1.ru_stime.tv_sec - ru0.ru_stime.tv_sec) + (ru1.ru_stime.tv_usec - ru0.ru_stime.tv_usec) / 1e6;
    int still = 0;
    for (int k = 0; k < nmine; k++) if (clients[k].state == S_JOINED) still++;
    for (int ch = 0; ch < nchannels; ch++) printf("sent %d %llu\n", ch, (unsigned long long)sent_per_channel[ch]);
    printf("counts %llu %llu %llu %llu %llu %d %.6f %.6f\n", (unsigned long long)deliveries,
           (unsigned long long)out_of_order, (unsigned long long)garbled, (unsigned long long)notices,
           (unsigned long long)disconnects, still, cpu, (now_ns() - w0) / 1e9);
    print_hist("lat", lat_hist);
    print_hist("late", late_hist);
    printf("end\n");
    fflush(stdout);

    /* connected (answering PINGs) until the parent has sampled the server's memory */
    for (;;) {
        struct epoll_event evs[256];
        int n = epoll_wait(epfd, evs, 256, 100);
        for (int i = 0; i < n; i++) {
            if (evs[i].data.ptr == NULL) {
                if (read_command(cmd, sizeof cmd) < 0 || strcmp(cmd, "release") == 0) goto out;
            } else {
                on_event(evs[i].data.ptr, evs[i].events);
            }
        }
    }
out:
    for (int k = 0; k < nmine; k++) if (clients[k].state != S_CLOSED) close(clients[k].fd);
    return 0;
}
