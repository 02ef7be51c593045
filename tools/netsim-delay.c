/*
 * netsim-delay — the delay and loss half of tools/netsim (link emulation without sch_netem).
 *
 * Holds every packet of one NFQUEUE for a fixed time, then accepts it; drops a packet with a
 * given probability instead. Run it inside the *receiving* network namespace, fed by
 *
 *   iptables -t mangle -A PREROUTING -i DEV -j NFQUEUE --queue-num N --queue-bypass
 *
 * (ingress, not the sender's OUTPUT chain: a packet held there stays charged to its socket and
 * TCP Small Queues stalls the sender; see doc/DESIGN.md, "Link emulation").
 *
 * The delay is constant, so release order is arrival order: held packets sit in a FIFO ring and
 * one batch verdict ("accept every id <= X", ids grow with each queued packet) releases all that
 * are due. Packets are never reordered, a timer tick costs one verdict message however many
 * packets it releases, and a queue notification lost to a full netlink buffer is still released
 * by the next batch. Only metadata is copied to user space (NFQNL_COPY_META): we never look at
 * payload. At most --queue-maxlen packets are held: when the ring is full, each new packet
 * releases the oldest one early (in order). The kernel queue may hold twice that (packets we
 * have not read yet) and then fails open (NFQA_CFG_F_FAIL_OPEN: accepted undelayed, which can
 * reorder; only if we fall far behind).
 *
 * A single-threaded poll loop over the netlink socket, a timerfd (absolute CLOCK_MONOTONIC) and a
 * signalfd: SIGTERM/SIGINT release what is held and exit, SIGUSR1 prints the counters.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include <linux/netfilter.h>
#include <linux/netlink.h>
#include <libnetfilter_queue/libnetfilter_queue.h>

#ifndef SOL_NETLINK
#define SOL_NETLINK 270
#endif

#define EX_UNAVAILABLE 69 /* sysexits.h: the kernel lacks NFQUEUE */
#define NSEC_PER_USEC 1000ull
#define NSEC_PER_SEC 1000000000ull

struct held {
    uint32_t id;
    uint64_t due_ns;
};

struct counters {
    uint64_t queued;   /* notifications received */
    uint64_t accepted; /* released after the delay */
    uint64_t lost;     /* dropped by --loss */
    uint64_t early;    /* released early: the ring was full, or at exit */
    uint64_t max_held;
    uint64_t verdicts; /* verdict messages sent */
    uint64_t nobufs;   /* netlink overruns (the packets are released by a later batch) */
    uint64_t late_sum_ns, late_max_ns; /* release time minus due time, over `accepted` */
};

struct delayer {
    struct nfq_handle *h;
    struct nfq_q_handle *qh;
    int nl_fd;
    int timer_fd;
    int sig_fd;
    uint64_t delay_ns;
    uint64_t loss_below; /* a packet is lost when rand() < loss_below; 0: no loss */
    uint64_t rng;
    struct held *ring;
    size_t cap, head, len;
    uint64_t armed_ns; /* 0: timer disarmed */
    int failed;        /* a verdict failed: leave the loop */
    struct counters st;
};

struct options {
    unsigned queue;
    uint64_t delay_us;
    double loss_pct;
    uint64_t seed;
    uint32_t maxlen;
    int daemon;
    int rt;
    const char *pidfile;
    const char *logfile;
};

static const char usage_text[] =
    "usage: netsim-delay --delay-us US [--queue N] [--loss PCT] [--seed N] [--queue-maxlen N]\n"
    "                    [--rt] [--daemon] [--pidfile FILE] [--log FILE]\n"
    "Holds the packets of NFQUEUE N (default 0) for US microseconds, then accepts them;\n"
    "drops each with probability PCT %% (seeded, default seed 1). Meant to be started by\n"
    "tools/netsim inside the receiving network namespace. Exit status 69: no NFQUEUE.\n"
    "  --queue-maxlen N  packets held at most (default 4096); when full, each new packet\n"
    "                    releases the oldest early; the kernel queue fails open at 2 N\n"
    "  --rt              run SCHED_FIFO (steadier release times on a busy machine)\n"
    "  --daemon          detach once the queue is bound; --pidfile gets the daemon's pid\n"
    "  --log FILE        with --daemon: stdout/stderr go to FILE (counters on SIGUSR1 and exit)\n";

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * NSEC_PER_SEC + (uint64_t)ts.tv_nsec;
}

/* splitmix64: tiny, seedable, good enough for Bernoulli loss */
static uint64_t next_rand(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static int parse_u64(const char *s, uint64_t max, uint64_t *out)
{
    char *end;
    unsigned long long v;

    if (s == NULL || *s < '0' || *s > '9')
        return -1;
    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno != 0 || *end != '\0' || v > max)
        return -1;
    *out = v;
    return 0;
}

static int parse_pct(const char *s, double *out)
{
    char *end;
    double v;

    if (s == NULL || ((*s < '0' || *s > '9') && *s != '.'))
        return -1;
    errno = 0;
    v = strtod(s, &end);
    if (errno != 0 || *end != '\0' || !(v >= 0.0 && v < 100.0))
        return -1;
    *out = v;
    return 0;
}

static void print_counters(const struct delayer *d, const char *when)
{
    printf("netsim-delay: %s: queued %" PRIu64 " accepted %" PRIu64 " lost %" PRIu64
           " early %" PRIu64 " held %zu max_held %" PRIu64 " verdicts %" PRIu64
           " nobufs %" PRIu64 " late_avg_us %" PRIu64 " late_max_us %" PRIu64 "\n",
           when, d->st.queued, d->st.accepted, d->st.lost, d->st.early, d->len, d->st.max_held,
           d->st.verdicts, d->st.nobufs,
           d->st.accepted ? d->st.late_sum_ns / d->st.accepted / 1000 : 0,
           d->st.late_max_ns / 1000);
    fflush(stdout);
}

static void arm_timer(struct delayer *d)
{
    struct itimerspec its;
    uint64_t due = d->len ? d->ring[d->head].due_ns : 0;

    if (due == d->armed_ns)
        return;
    memset(&its, 0, sizeof(its));
    if (due != 0) {
        its.it_value.tv_sec = (time_t)(due / NSEC_PER_SEC);
        its.it_value.tv_nsec = (long)(due % NSEC_PER_SEC);
    }
    /* absolute time: a due time already past fires at once */
    if (timerfd_settime(d->timer_fd, TFD_TIMER_ABSTIME, &its, NULL) < 0) {
        perror("netsim-delay: timerfd_settime");
        d->failed = 1;
        return;
    }
    d->armed_ns = due;
}

/* Accept the first `count` held packets (one batch verdict: every id up to the last one's). */
static void release(struct delayer *d, size_t count)
{
    uint32_t last;

    if (count == 0)
        return;
    last = d->ring[(d->head + count - 1) % d->cap].id;
    if (nfq_set_verdict_batch(d->qh, last, NF_ACCEPT) < 0) {
        fprintf(stderr, "netsim-delay: verdict failed: %s\n", strerror(errno));
        d->failed = 1;
    }
    d->st.verdicts++;
    d->head = (d->head + count) % d->cap;
    d->len -= count;
}

static void release_due(struct delayer *d, uint64_t now)
{
    size_t n = 0;

    while (n < d->len && d->ring[(d->head + n) % d->cap].due_ns <= now) {
        uint64_t late = now - d->ring[(d->head + n) % d->cap].due_ns;

        d->st.late_sum_ns += late;
        if (late > d->st.late_max_ns)
            d->st.late_max_ns = late;
        n++;
    }
    d->st.accepted += n;
    release(d, n);
}

static int on_packet(struct nfq_q_handle *qh, struct nfgenmsg *msg, struct nfq_data *nfa,
                     void *data)
{
    struct delayer *d = data;
    struct nfqnl_msg_packet_hdr *ph = nfq_get_msg_packet_hdr(nfa);
    struct held *slot;
    uint32_t id;

    (void)msg;
    if (ph == NULL)
        return 0;
    id = ntohl(ph->packet_id);
    d->st.queued++;

    if (d->loss_below != 0 && next_rand(&d->rng) < d->loss_below) {
        d->st.lost++;
        d->st.verdicts++;
        if (nfq_set_verdict(qh, id, NF_DROP, 0, NULL) < 0) {
            fprintf(stderr, "netsim-delay: verdict failed: %s\n", strerror(errno));
            d->failed = 1;
        }
        return 0;
    }
    if (d->len == d->cap) {
        /* full: the oldest held packet goes now, early but in order */
        d->st.early++;
        release(d, 1);
    }
    slot = &d->ring[(d->head + d->len) % d->cap];
    slot->id = id;
    slot->due_ns = now_ns() + d->delay_ns;
    d->len++;
    if (d->len > d->st.max_held)
        d->st.max_held = d->len;
    return 0;
}

static int parse_args(int argc, char **argv, struct options *o)
{
    int i;
    uint64_t v;
    int have_delay = 0;

    memset(o, 0, sizeof(*o));
    o->seed = 1;
    o->maxlen = 4096;
    for (i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *val = i + 1 < argc ? argv[i + 1] : NULL;

        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            fputs(usage_text, stdout);
            exit(0);
        } else if (strcmp(a, "--daemon") == 0) {
            o->daemon = 1;
            continue;
        } else if (strcmp(a, "--rt") == 0) {
            o->rt = 1;
            continue;
        }
        if (val == NULL) {
            fprintf(stderr, "netsim-delay: %s needs a value (or is unknown)\n%s", a, usage_text);
            return -1;
        }
        i++;
        if (strcmp(a, "--queue") == 0 && parse_u64(val, 65535, &v) == 0) {
            o->queue = (unsigned)v;
        } else if (strcmp(a, "--delay-us") == 0 && parse_u64(val, 60000000, &v) == 0) {
            o->delay_us = v;
            have_delay = 1;
        } else if (strcmp(a, "--loss") == 0 && parse_pct(val, &o->loss_pct) == 0) {
            /* parsed */
        } else if (strcmp(a, "--seed") == 0 && parse_u64(val, UINT64_MAX, &v) == 0) {
            o->seed = v;
        } else if (strcmp(a, "--queue-maxlen") == 0 && parse_u64(val, 1u << 20, &v) == 0 && v > 0) {
            o->maxlen = (uint32_t)v;
        } else if (strcmp(a, "--pidfile") == 0) {
            o->pidfile = val;
        } else if (strcmp(a, "--log") == 0) {
            o->logfile = val;
        } else {
            fprintf(stderr, "netsim-delay: bad option or value: %s %s\n%s", a, val, usage_text);
            return -1;
        }
    }
    if (!have_delay) {
        fprintf(stderr, "netsim-delay: --delay-us is required\n%s", usage_text);
        return -1;
    }
    return 0;
}

static int write_pidfile(const char *path, pid_t pid)
{
    char tmp[4096];
    FILE *f;

    if (snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int)sizeof(tmp))
        return -1;
    f = fopen(tmp, "w");
    if (f == NULL)
        return -1;
    fprintf(f, "%ld\n", (long)pid);
    if (fclose(f) != 0 || rename(tmp, path) != 0) {
        unlink(tmp);
        return -1;
    }
    return 0;
}

/* 0, -1, or EX_UNAVAILABLE when the kernel has no nfnetlink_queue (exit status for tools/netsim) */
static int open_queue(struct delayer *d, const struct options *o)
{
    int one = 1;
    uint32_t flags = NFQA_CFG_F_FAIL_OPEN | NFQA_CFG_F_GSO;

    d->h = nfq_open();
    if (d->h == NULL) {
        fprintf(stderr, "netsim-delay: cannot open nfnetlink: %s (kernel without "
                        "nfnetlink_queue?)\n", strerror(errno));
        return EX_UNAVAILABLE;
    }
    d->qh = nfq_create_queue(d->h, (uint16_t)o->queue, on_packet, d);
    if (d->qh == NULL) {
        fprintf(stderr, "netsim-delay: cannot bind NFQUEUE %u: %s (another program bound to "
                        "it, or no nfnetlink_queue in the kernel)\n", o->queue, strerror(errno));
        return EX_UNAVAILABLE;
    }
    if (nfq_set_mode(d->qh, NFQNL_COPY_META, 0) < 0) {
        fprintf(stderr, "netsim-delay: cannot set copy mode: %s\n", strerror(errno));
        return -1;
    }
    if (nfq_set_queue_maxlen(d->qh, o->maxlen * 2) < 0)
        fprintf(stderr, "netsim-delay: warning: cannot set queue maxlen: %s\n", strerror(errno));
    if (nfq_set_queue_flags(d->qh, flags, flags) < 0)
        fprintf(stderr, "netsim-delay: warning: no fail-open: %s\n", strerror(errno));
    d->nl_fd = nfq_fd(d->h);
    /* room for a full kernel queue of notifications (skb truesize ~1 KB each; at most 64 MB);
     * SO_RCVBUFFORCE as root */
    nfnl_rcvbufsiz(nfq_nfnlh(d->h), o->maxlen < 32768 ? o->maxlen * 2048u : 64u << 20);
    setsockopt(d->nl_fd, SOL_NETLINK, NETLINK_NO_ENOBUFS, &one, sizeof(one));
    if (fcntl(d->nl_fd, F_SETFL, fcntl(d->nl_fd, F_GETFL) | O_NONBLOCK) < 0) {
        perror("netsim-delay: fcntl");
        return -1;
    }
    return 0;
}

static int detach(const struct options *o)
{
    int log_fd = -1, null_fd;
    pid_t pid;

    if (o->logfile != NULL) {
        log_fd = open(o->logfile, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (log_fd < 0) {
            fprintf(stderr, "netsim-delay: %s: %s\n", o->logfile, strerror(errno));
            return -1;
        }
    }
    null_fd = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null_fd < 0) {
        perror("netsim-delay: /dev/null");
        return -1;
    }
    fflush(NULL);
    pid = fork();
    if (pid < 0) {
        perror("netsim-delay: fork");
        return -1;
    }
    if (pid > 0) {
        /* the queue is bound already: from now on packets wait for the child */
        if (o->pidfile != NULL && write_pidfile(o->pidfile, pid) < 0) {
            fprintf(stderr, "netsim-delay: cannot write %s: %s\n", o->pidfile, strerror(errno));
            kill(pid, SIGTERM);
            _exit(1);
        }
        _exit(0);
    }
    setsid();
    dup2(null_fd, 0);
    dup2(log_fd >= 0 ? log_fd : null_fd, 1);
    dup2(log_fd >= 0 ? log_fd : null_fd, 2);
    close(null_fd);
    if (log_fd >= 0)
        close(log_fd);
    return 0;
}

static int run(struct delayer *d)
{
    static char buf[65536] __attribute__((aligned(8)));
    struct pollfd pfd[3];
    int stop = 0;

    pfd[0].fd = d->nl_fd;
    pfd[0].events = POLLIN;
    pfd[1].fd = d->timer_fd;
    pfd[1].events = POLLIN;
    pfd[2].fd = d->sig_fd;
    pfd[2].events = POLLIN;

    while (!stop && !d->failed) {
        if (poll(pfd, 3, -1) < 0) {
            if (errno == EINTR)
                continue;
            perror("netsim-delay: poll");
            return -1;
        }
        if (pfd[2].revents & POLLIN) {
            struct signalfd_siginfo si;

            while (read(d->sig_fd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
                if (si.ssi_signo == SIGUSR1)
                    print_counters(d, "running");
                else if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT)
                    stop = 1;
            }
        }
        if (pfd[0].revents & (POLLIN | POLLERR)) {
            /* a bounded batch, so that releases due meanwhile are not kept waiting */
            for (int batch = 0; batch < 256; batch++) {
                ssize_t n = recv(d->nl_fd, buf, sizeof(buf), MSG_DONTWAIT);

                if (n < 0) {
                    if (errno == ENOBUFS) {
                        d->st.nobufs++;
                        continue;
                    }
                    if (errno == EINTR)
                        continue;
                    if (errno == EAGAIN || errno == EWOULDBLOCK)
                        break;
                    perror("netsim-delay: recv");
                    return -1;
                }
                if (n == 0)
                    break;
                nfq_handle_packet(d->h, buf, (int)n);
            }
        }
        if (pfd[1].revents & POLLIN) {
            uint64_t ticks;

            if (read(d->timer_fd, &ticks, sizeof(ticks)) < 0 && errno != EAGAIN)
                perror("netsim-delay: timerfd read");
            d->armed_ns = 0;
        }
        release_due(d, now_ns());
        arm_timer(d);
    }
    return d->failed ? -1 : 0;
}

int main(int argc, char **argv)
{
    struct options o;
    struct delayer d;
    sigset_t mask;
    int rc = 1;

    if (parse_args(argc, argv, &o) < 0)
        return 2;

    memset(&d, 0, sizeof(d));
    d.nl_fd = d.timer_fd = d.sig_fd = -1;
    d.delay_ns = o.delay_us * NSEC_PER_USEC;
    d.rng = o.seed;
    if (o.loss_pct > 0.0)
        d.loss_below = (uint64_t)(o.loss_pct / 100.0 * 18446744073709551616.0);
    d.cap = o.maxlen;
    d.ring = calloc(d.cap, sizeof(*d.ring));
    if (d.ring == NULL) {
        fputs("netsim-delay: out of memory\n", stderr);
        goto done;
    }

    /* signals are read from a signalfd; block them before a fork so none is lost */
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGUSR1);
    sigaddset(&mask, SIGHUP);
    if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0) {
        perror("netsim-delay: sigprocmask");
        goto done;
    }

    rc = open_queue(&d, &o);
    if (rc != 0) {
        rc = rc == EX_UNAVAILABLE ? EX_UNAVAILABLE : 1;
        goto done;
    }
    rc = 1;

    if (o.daemon) {
        if (detach(&o) < 0)
            goto done;
    } else if (o.pidfile != NULL && write_pidfile(o.pidfile, getpid()) < 0) {
        fprintf(stderr, "netsim-delay: cannot write %s: %s\n", o.pidfile, strerror(errno));
        goto done;
    }

    d.sig_fd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    d.timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (d.sig_fd < 0 || d.timer_fd < 0) {
        perror("netsim-delay: signalfd/timerfd");
        goto done;
    }
    /* release times are what we emulate: no timer slack, and FIFO priority when asked */
    prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);
    if (o.rt) {
        struct sched_param sp = {.sched_priority = 10};

        if (sched_setscheduler(0, SCHED_FIFO, &sp) < 0)
            fprintf(stderr, "netsim-delay: warning: no SCHED_FIFO: %s\n", strerror(errno));
    }
    printf("netsim-delay: queue %u, delay %" PRIu64 " us, loss %.3f %%, seed %" PRIu64
           ", maxlen %" PRIu32 "\n", o.queue, o.delay_us, o.loss_pct, o.seed, o.maxlen);
    fflush(stdout);

    rc = run(&d) < 0 ? 1 : 0;

    /* let everything held go now rather than have the queue's teardown drop it */
    d.st.early += d.len;
    release(&d, d.len);
    print_counters(&d, "exit");
    if (o.pidfile != NULL)
        unlink(o.pidfile);

done:
    if (d.timer_fd >= 0)
        close(d.timer_fd);
    if (d.sig_fd >= 0)
        close(d.sig_fd);
    if (d.qh != NULL)
        nfq_destroy_queue(d.qh);
    if (d.h != NULL)
        nfq_close(d.h);
    free(d.ring);
    return rc;
}
