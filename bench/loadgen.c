/*
 * bench/loadgen.c: load for socketmap and tcp_table servers, shaped as Postfix loads them.
 *
 * N persistent connections, each with at most one request outstanding: a connection sends
 * its next request only after the previous reply has arrived, as Postfix's clients do.
 * One thread, epoll. Each request takes the next key of the key file (one shared cursor,
 * so with -1 every key is asked exactly once, in file order, across all connections).
 * With -m - each line of the key file is a whole socketmap request, "MAP KEY".
 *
 * Two shapes of load:
 * - closed loop (default): every connection sends again as soon as its reply arrives; the
 *   throughput is the server's (or this program's) limit, and by Little's law the mean
 *   latency is N / throughput;
 * - paced (-r RATE): requests are due at RATE per second in total, each sent on a free
 *   connection; a request that finds none free waits, and its latency is counted from
 *   when it was due (no coordinated omission). This is a server with N clients that also
 *   do other work, as smtpd and cleanup processes do.
 *
 *     cc -O2 -o loadgen bench/loadgen.c
 *     ./loadgen -p PORT -k KEYFILE [-H 127.0.0.1] [-t socketmap|tcp] [-m MAP] [-c CONNECTIONS]
 *               [-d SECONDS] [-w WARMUP_SECONDS] [-r RATE] [-n MAX_REQUESTS] [-1] [-s SAMPLES_FILE]
 *
 * Bounded: it stops sending after -d seconds (default 5), -n requests or, with -1, the last
 * key, and waits at most 10 s for the replies still due. Replies that arrive during the
 * first -w seconds are not counted. Prints one JSON object on stdout; with -s it also writes
 * every counted latency as a little-endian uint64 of nanoseconds, for plots. Exit status 3
 * means a connection broke or a reply never came (the JSON says how many).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
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

#define REPLY_CAP (100000 + 16) /* socketmap_table(5): replies are at most 100000 bytes */
#define DRAIN_NS 10000000000ull /* 10 s for the replies still due after the end */
#define MAX_EVENTS 512

enum { SOCKETMAP, TCP };
enum { RE_OK, RE_NOTFOUND, RE_TEMP, RE_PERM, RE_OTHER, RE_KINDS };
static const char *KIND_NAMES[RE_KINDS] = {"ok", "notfound", "temp", "perm", "other"};

struct conn {
    int fd;
    int busy;        /* a request is outstanding */
    uint64_t due;    /* ns: when the outstanding request was due (closed loop: when sent) */
    const char *out; /* the unsent rest of the outstanding request */
    size_t out_len;
    char *in;
    size_t in_len;
};

/* The whole run: the requests, the bounds, the counters. */
static struct {
    int proto, once, ep;
    char *reqs;
    size_t *offs, *lens, nkeys, cursor;
    unsigned long long max_requests, issued, errors, counted, kinds[RE_KINDS];
    uint64_t t0, t_warm, t_end, last_reply;
    double rate;    /* requests per second in total; 0: closed loop */
    uint64_t next_due;
    unsigned long long paced; /* requests dispatched in paced mode */
    int stopped, outstanding, open_conns;
    uint64_t *samples;
    size_t nsamples, scap;
    struct conn **idle; /* paced mode: connections with nothing outstanding */
    int nidle;
} S;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void die(const char *what) {
    perror(what);
    exit(1);
}

/* tcp_table(5) requests: "get KEY\n", KEY with %XX for whitespace, controls, % and non-ASCII. */
static size_t tcp_encode(char *dst, const char *key, size_t len) {
    static const char hex[] = "0123456789ABCDEF";
    size_t n = 4;
    memcpy(dst, "get ", 4);
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)key[i];
        if (ch <= 32 || ch >= 127 || ch == '%') {
            dst[n++] = '%';
            dst[n++] = hex[ch >> 4];
            dst[n++] = hex[ch & 15];
        } else {
            dst[n++] = (char)ch;
        }
    }
    dst[n++] = '\n';
    return n;
}

/* Length of the first complete reply in buf, 0 if it is not complete yet, -1 if malformed. */
static long reply_length(const char *buf, size_t len, const char **payload, size_t *plen) {
    if (S.proto == TCP) {
        const char *nl = memchr(buf, '\n', len);
        if (!nl) return len >= REPLY_CAP ? -1 : 0;
        *payload = buf;
        *plen = (size_t)(nl - buf);
        return (long)(nl - buf + 1);
    }
    size_t n = 0, i = 0;
    while (i < len && buf[i] >= '0' && buf[i] <= '9') {
        n = n * 10 + (size_t)(buf[i] - '0');
        if (n > REPLY_CAP) return -1;
        i++;
    }
    if (i == len) return 0;
    if (i == 0 || buf[i] != ':') return -1;
    if (len - (i + 1) < n + 1) return 0;
    if (buf[i + 1 + n] != ',') return -1;
    *payload = buf + i + 1;
    *plen = n;
    return (long)(i + 1 + n + 1);
}

static int classify(const char *p, size_t n) {
#define STARTS(s) (n >= sizeof(s) - 1 && memcmp(p, s, sizeof(s) - 1) == 0)
    if (S.proto == TCP) {
        if (STARTS("200")) return RE_OK;
        if (STARTS("500")) return RE_NOTFOUND;
        if (STARTS("400")) return RE_TEMP;
        return RE_OTHER;
    }
    if (STARTS("OK")) return RE_OK;
    if (STARTS("NOTFOUND")) return RE_NOTFOUND;
    if (STARTS("TEMP") || STARTS("TIMEOUT")) return RE_TEMP;
    if (STARTS("PERM")) return RE_PERM;
    return RE_OTHER;
#undef STARTS
}

static int may_send(void) {
    if (S.stopped) return 0;
    if (S.once && S.cursor >= S.nkeys) return 0;
    if (S.max_requests && S.issued >= S.max_requests) return 0;
    return 1;
}

/* Send the next request on c, due at `due`. -1 if the connection broke. */
static int send_next(struct conn *c, uint64_t due) {
    size_t k = S.cursor++ % S.nkeys;
    c->out = S.reqs + S.offs[k];
    c->out_len = S.lens[k];
    c->busy = 1;
    c->due = due;
    S.issued++;
    S.outstanding++;
    ssize_t w = write(c->fd, c->out, c->out_len);
    if (w < 0 && errno != EAGAIN) return -1;
    if (w > 0) {
        c->out += w;
        c->out_len -= (size_t)w;
    }
    if (c->out_len) {
        struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
        epoll_ctl(S.ep, EPOLL_CTL_MOD, c->fd, &ev);
    }
    return 0;
}

static void drop(struct conn *c) {
    S.errors++;
    if (c->busy) S.outstanding--;
    c->busy = 0;
    epoll_ctl(S.ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
    S.open_conns--;
}

/* A connection is free: closed loop sends again at once, paced mode parks it. */
static void free_conn(struct conn *c, uint64_t t) {
    if (S.rate > 0) {
        S.idle[S.nidle++] = c;
        return;
    }
    if (!may_send()) {
        S.stopped = 1;
        return;
    }
    if (send_next(c, t) < 0) drop(c);
}

/* Paced mode: send every request that is due on a free connection. */
static void dispatch_due(uint64_t t) {
    while (S.nidle > 0 && S.next_due <= t) {
        if (!may_send()) {
            S.stopped = 1;
            return;
        }
        struct conn *c = S.idle[--S.nidle];
        uint64_t due = S.next_due;
        S.paced++;
        S.next_due = S.t0 + (uint64_t)((double)S.paced * 1e9 / S.rate);
        if (send_next(c, due) < 0) drop(c);
    }
}

static void on_readable(struct conn *c) {
    ssize_t r = read(c->fd, c->in + c->in_len, REPLY_CAP - c->in_len);
    if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) {
        drop(c);
        return;
    }
    if (r < 0) return;
    c->in_len += (size_t)r;
    const char *payload;
    size_t plen;
    long used = reply_length(c->in, c->in_len, &payload, &plen);
    if (used == 0) return;
    if (used < 0 || !c->busy || (size_t)used != c->in_len) { /* malformed, unasked for, or two replies */
        drop(c);
        return;
    }
    uint64_t t = now_ns();
    S.outstanding--;
    c->busy = 0;
    c->in_len = 0;
    if (t >= S.t_warm && t <= S.t_end) {
        S.kinds[classify(payload, plen)]++;
        S.counted++;
        S.last_reply = t;
        if (S.nsamples == S.scap) {
            S.scap *= 2;
            S.samples = realloc(S.samples, S.scap * sizeof(uint64_t));
            if (!S.samples) die("loadgen: samples");
        }
        S.samples[S.nsamples++] = t - c->due;
    }
    if (t >= S.t_end) S.stopped = 1;
    free_conn(c, t);
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static double pct(const uint64_t *s, size_t n, double p) {
    if (n == 0) return 0;
    size_t i = (size_t)(p * (double)(n - 1) + 0.5);
    return (double)s[i] / 1000.0;
}

/* Wait for events at most `ns` nanoseconds (epoll_pwait2 where glibc has it). */
static int wait_events(struct epoll_event *events, uint64_t ns) {
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 35))
    struct timespec ts = {.tv_sec = (time_t)(ns / 1000000000u), .tv_nsec = (long)(ns % 1000000000u)};
    return epoll_pwait2(S.ep, events, MAX_EVENTS, &ts, NULL);
#else
    return epoll_wait(S.ep, events, MAX_EVENTS, (int)(ns / 1000000u)); /* under 1 ms: poll */
#endif
}

int main(int argc, char **argv) {
    const char *host = "127.0.0.1", *keyfile = NULL, *map = "mailboxes", *samples_path = NULL;
    int port = 0, nconn = 1, opt;
    double duration = 5, warmup = 0;
    S.proto = SOCKETMAP;
    while ((opt = getopt(argc, argv, "H:p:t:m:k:c:d:w:r:n:1s:")) != -1) {
        switch (opt) {
        case 'H': host = optarg; break;
        case 'p': port = atoi(optarg); break;
        case 't': S.proto = strcmp(optarg, "tcp") == 0 ? TCP : SOCKETMAP; break;
        case 'm': map = optarg; break;
        case 'k': keyfile = optarg; break;
        case 'c': nconn = atoi(optarg); break;
        case 'd': duration = atof(optarg); break;
        case 'w': warmup = atof(optarg); break;
        case 'r': S.rate = atof(optarg); break;
        case 'n': S.max_requests = strtoull(optarg, NULL, 10); break;
        case '1': S.once = 1; break;
        case 's': samples_path = optarg; break;
        default:
            fprintf(stderr, "usage: see the comment at the top of bench/loadgen.c\n");
            return 2;
        }
    }
    if (!keyfile || port <= 0 || nconn < 1 || duration <= 0 || S.rate < 0) {
        fprintf(stderr, "loadgen: -p PORT and -k KEYFILE are required; -c and -d must be positive\n");
        return 2;
    }

    /* Every request, encoded once up front: nothing on the hot path but write() and read(). */
    FILE *kf = fopen(keyfile, "r");
    if (!kf) die("loadgen: key file");
    size_t kcap = 1024, blen = 0, bcap = 1 << 16, lcap = 0, maplen = strlen(map);
    S.offs = malloc(kcap * sizeof(size_t));
    S.lens = malloc(kcap * sizeof(size_t));
    S.reqs = malloc(bcap);
    char *line = NULL;
    ssize_t ll;
    while ((ll = getline(&line, &lcap, kf)) > 0) {
        while (ll > 0 && (line[ll - 1] == '\n' || line[ll - 1] == '\r')) ll--;
        if (ll == 0) continue;
        size_t need = (size_t)ll * 3 + maplen + 32;
        if (blen + need > bcap) {
            while (blen + need > bcap) bcap *= 2;
            S.reqs = realloc(S.reqs, bcap);
        }
        if (S.nkeys == kcap) {
            kcap *= 2;
            S.offs = realloc(S.offs, kcap * sizeof(size_t));
            S.lens = realloc(S.lens, kcap * sizeof(size_t));
        }
        if (!S.reqs || !S.offs || !S.lens) die("loadgen: keys");
        size_t n;
        if (S.proto == TCP) n = tcp_encode(S.reqs + blen, line, (size_t)ll);
        else if (strcmp(map, "-") == 0) n = (size_t)sprintf(S.reqs + blen, "%zu:%.*s,", (size_t)ll, (int)ll, line);
        else n = (size_t)sprintf(S.reqs + blen, "%zu:%s %.*s,", maplen + 1 + (size_t)ll, map, (int)ll, line);
        S.offs[S.nkeys] = blen;
        S.lens[S.nkeys] = n;
        blen += n;
        S.nkeys++;
    }
    fclose(kf);
    free(line);
    if (S.nkeys == 0) {
        fprintf(stderr, "loadgen: %s holds no keys\n", keyfile);
        return 2;
    }

    S.ep = epoll_create1(0);
    struct conn *conns = calloc((size_t)nconn, sizeof(struct conn));
    S.idle = calloc((size_t)nconn, sizeof(struct conn *));
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        fprintf(stderr, "loadgen: %s is not an IPv4 address\n", host);
        return 2;
    }
    int one = 1;
    for (int i = 0; i < nconn; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0) die("loadgen: socket");
        if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) die("loadgen: connect");
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0) die("loadgen: O_NONBLOCK");
        conns[i].fd = fd;
        conns[i].in = malloc(REPLY_CAP);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &conns[i]};
        if (epoll_ctl(S.ep, EPOLL_CTL_ADD, fd, &ev) < 0) die("loadgen: epoll_ctl");
    }
    S.open_conns = nconn;
    S.scap = 1 << 20;
    S.samples = malloc(S.scap * sizeof(uint64_t));

    struct rusage ru0, ru1;
    getrusage(RUSAGE_SELF, &ru0);
    S.t0 = now_ns();
    S.t_warm = S.t0 + (uint64_t)(warmup * 1e9);
    S.t_end = S.t_warm + (uint64_t)(duration * 1e9);
    S.last_reply = S.t_warm;
    S.next_due = S.t0;
    for (int i = 0; i < nconn; i++) free_conn(&conns[i], S.t0);

    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        uint64_t t = now_ns();
        if (t >= S.t_end) S.stopped = 1;
        if (S.rate > 0) dispatch_due(t);
        if (S.open_conns == 0 || t >= S.t_end + DRAIN_NS) break;
        if (S.outstanding == 0 && (S.stopped || S.rate == 0)) break;
        uint64_t wait = 100000000u; /* 100 ms */
        if (S.rate > 0 && !S.stopped && S.nidle > 0) wait = S.next_due > t ? S.next_due - t : 0;
        if (!S.stopped && S.t_end - t < wait) wait = S.t_end - t;
        int n = wait_events(events, wait);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("loadgen: epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            struct conn *c = events[i].data.ptr;
            if (c->fd < 0) continue;
            if ((events[i].events & EPOLLOUT) && c->out_len) {
                ssize_t w = write(c->fd, c->out, c->out_len);
                if (w < 0 && errno != EAGAIN) {
                    drop(c);
                    continue;
                }
                if (w > 0) {
                    c->out += w;
                    c->out_len -= (size_t)w;
                }
                if (!c->out_len) {
                    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
                    epoll_ctl(S.ep, EPOLL_CTL_MOD, c->fd, &ev);
                }
            }
            if (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) on_readable(c);
        }
    }
    getrusage(RUSAGE_SELF, &ru1);
    uint64_t t_stop = now_ns();

    /* The window is [warm-up end, end]; a run that ran out of keys ends at its last reply. */
    uint64_t t_last = S.t_end < t_stop ? S.t_end : t_stop;
    if (S.once && S.last_reply < t_last) t_last = S.last_reply;
    double window = t_last > S.t_warm ? (double)(t_last - S.t_warm) / 1e9 : 0;
    double cpu = (double)(ru1.ru_utime.tv_sec - ru0.ru_utime.tv_sec + ru1.ru_stime.tv_sec - ru0.ru_stime.tv_sec) +
                 (double)(ru1.ru_utime.tv_usec - ru0.ru_utime.tv_usec + ru1.ru_stime.tv_usec - ru0.ru_stime.tv_usec) / 1e6;
    double mean = 0;
    for (size_t i = 0; i < S.nsamples; i++) mean += (double)S.samples[i];
    mean = S.nsamples ? mean / (double)S.nsamples / 1000.0 : 0;
    if (samples_path) {
        FILE *sf = fopen(samples_path, "wb");
        if (!sf) die("loadgen: samples file");
        if (fwrite(S.samples, sizeof(uint64_t), S.nsamples, sf) != S.nsamples) die("loadgen: samples file");
        fclose(sf);
    }
    qsort(S.samples, S.nsamples, sizeof(uint64_t), cmp_u64);
    const uint64_t *q = S.samples;
    size_t nq = S.nsamples;
    printf("{\"connections\": %d, \"protocol\": \"%s\", \"offered_rate\": %.1f, \"requests\": %llu, "
           "\"seconds\": %.6f, \"rps\": %.1f, ",
           nconn, S.proto == TCP ? "tcp" : "socketmap", S.rate, S.counted, window,
           window > 0 ? (double)S.counted / window : 0.0);
    printf("\"latency_us\": {\"mean\": %.2f, \"p50\": %.2f, \"p90\": %.2f, \"p99\": %.2f, \"p999\": %.2f, "
           "\"max\": %.2f}, ",
           mean, pct(q, nq, 0.5), pct(q, nq, 0.9), pct(q, nq, 0.99), pct(q, nq, 0.999),
           nq ? (double)q[nq - 1] / 1000.0 : 0.0);
    printf("\"replies\": {");
    for (int k = 0; k < RE_KINDS; k++) printf("%s\"%s\": %llu", k ? ", " : "", KIND_NAMES[k], S.kinds[k]);
    printf("}, \"issued\": %llu, \"errors\": %llu, \"unanswered\": %d, \"loadgen_cpu_seconds\": %.3f, "
           "\"wall_seconds\": %.3f}\n",
           S.issued, S.errors, S.outstanding, cpu, (double)(t_stop - S.t0) / 1e9);
    for (int i = 0; i < nconn; i++)
        if (conns[i].fd >= 0) close(conns[i].fd);
    return S.errors || S.outstanding ? 3 : 0;
}
