/*
 * bench/ceiling.c: the fastest socketmap server this machine can run, as a reference.
 *
 * It answers every netstring request with the constant netstring "4:OK x," and does
 * nothing else: no map, no key, no cache. One thread, epoll, non-blocking sockets, as
 * mailmapd's single event loop is. Whatever rate it sustains under bench/loadgen.c is the
 * ceiling that every mailmapd figure is divided by.
 *
 *     cc -O2 -o ceiling bench/ceiling.c
 *     ./ceiling [-p PORT] [-t MAX_SECONDS]
 *
 * Listens on 127.0.0.1 only (port 0 = any free port), prints the port on stdout, and runs
 * until SIGTERM/SIGINT or MAX_SECONDS (default 3600), whichever comes first.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_REQUEST 100000 /* socketmap_table(5): requests and replies are at most 100000 bytes */
#define IN_CAP (MAX_REQUEST + 16)
#define MAX_EVENTS 256

static const char REPLY[] = "4:OK x,";
#define REPLY_LEN (sizeof(REPLY) - 1)

struct conn {
    int fd;
    size_t in_len;
    char *in;
    char *out;
    size_t out_len, out_cap;
};

static volatile sig_atomic_t stopping = 0;

static void on_signal(int sig) {
    (void)sig;
    stopping = 1;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void close_conn(int ep, struct conn *c) {
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->in);
    free(c->out);
    free(c);
}

/* Consume every complete netstring in c->in, appending one reply each. -1: malformed. */
static int parse(struct conn *c) {
    size_t pos = 0;
    while (pos < c->in_len) {
        size_t len = 0, i = pos;
        while (i < c->in_len && c->in[i] >= '0' && c->in[i] <= '9') {
            len = len * 10 + (size_t)(c->in[i] - '0');
            if (len > MAX_REQUEST) return -1;
            i++;
        }
        if (i == c->in_len) break; /* length not complete yet */
        if (i == pos || c->in[i] != ':') return -1;
        if (c->in_len - (i + 1) < len + 1) break; /* payload or ',' not here yet */
        if (c->in[i + 1 + len] != ',') return -1;
        pos = i + 1 + len + 1;
        if (c->out_len + REPLY_LEN > c->out_cap) {
            size_t cap = c->out_cap ? c->out_cap * 2 : 4096;
            char *grown = realloc(c->out, cap);
            if (!grown) return -1;
            c->out = grown;
            c->out_cap = cap;
        }
        memcpy(c->out + c->out_len, REPLY, REPLY_LEN);
        c->out_len += REPLY_LEN;
    }
    memmove(c->in, c->in + pos, c->in_len - pos);
    c->in_len -= pos;
    return 0;
}

/* Write what is pending; 1 if something is left (wait for EPOLLOUT), -1 on error. */
static int flush_out(struct conn *c) {
    size_t done = 0;
    while (done < c->out_len) {
        ssize_t n = write(c->fd, c->out + done, c->out_len - done);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) break;
            return -1;
        }
        done += (size_t)n;
    }
    memmove(c->out, c->out + done, c->out_len - done);
    c->out_len -= done;
    return c->out_len ? 1 : 0;
}

int main(int argc, char **argv) {
    int port = 0, opt;
    double max_seconds = 3600;
    while ((opt = getopt(argc, argv, "p:t:")) != -1) {
        if (opt == 'p') port = atoi(optarg);
        else if (opt == 't') max_seconds = atof(optarg);
        else {
            fprintf(stderr, "usage: %s [-p PORT] [-t MAX_SECONDS]\n", argv[0]);
            return 2;
        }
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);

    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(lfd, (struct sockaddr *)&addr, sizeof(addr)) < 0 || listen(lfd, 1024) < 0) {
        perror("ceiling: bind/listen");
        return 1;
    }
    socklen_t alen = sizeof(addr);
    getsockname(lfd, (struct sockaddr *)&addr, &alen);
    printf("%d\n", ntohs(addr.sin_port));
    fflush(stdout);

    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    struct epoll_event events[MAX_EVENTS];
    double deadline = now() + max_seconds;

    while (!stopping && now() < deadline) {
        int n = epoll_wait(ep, events, MAX_EVENTS, 200);
        if (n < 0 && errno != EINTR) {
            perror("ceiling: epoll_wait");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            struct conn *c = events[i].data.ptr;
            if (c == NULL) { /* the listener */
                int fd;
                while ((fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
                    struct conn *nc = calloc(1, sizeof(*nc));
                    nc->fd = fd;
                    nc->in = malloc(IN_CAP);
                    struct epoll_event cev = {.events = EPOLLIN, .data.ptr = nc};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev);
                }
                continue;
            }
            int dead = 0;
            if (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                ssize_t r = read(c->fd, c->in + c->in_len, IN_CAP - c->in_len);
                if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) dead = 1;
                else if (r > 0) {
                    c->in_len += (size_t)r;
                    if (parse(c) < 0 || c->in_len == IN_CAP) dead = 1;
                }
            }
            if (!dead) {
                int left = flush_out(c);
                if (left < 0) dead = 1;
                else {
                    struct epoll_event cev = {.events = EPOLLIN | (left ? EPOLLOUT : 0), .data.ptr = c};
                    if (left || (events[i].events & EPOLLOUT)) epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &cev);
                }
            }
            if (dead) close_conn(ep, c);
        }
    }
    close(lfd);
    return 0;
}
