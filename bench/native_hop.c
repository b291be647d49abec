/* The native floor: one more process hop that does nothing but copy bytes, in C (two blocking
 * threads per connection, TCP_NODELAY both ways). What it adds is what any gateway, Go or Rust
 * included, pays on this machine before doing any work. Compiled by the benchmark when a C
 * compiler is at hand:
 *
 *     cc -O2 -pthread -o native_hop bench/native_hop.c
 *     ./native_hop 8992 8991     # listen port, upstream port; prints READY http://127.0.0.1:8992
 *
 * With a third argument it is a wire of that one-way delay instead (microseconds, each
 * direction): every read is written on at the time the kernel received it plus the delay. The
 * time is the kernel's (SO_TIMESTAMPNS), set when the sender wrote, not when this process got
 * round to reading: a reader scheduled late, say behind the sender on a busy CPU, does not move
 * the delivery, as it would not for a peer on another machine. A reader thread stamps and
 * queues, a writer thread sleeps until each piece is due, so pieces keep their own times.
 *
 *     ./native_hop 8992 8991 5000    # 5 ms each way: a 10 ms round trip
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

struct connection {
    int client, upstream;
    atomic_int pumps_running; /* the second pump to finish closes both sockets */
};

struct pump_ends {
    struct connection *conn;
    int from, to;
};

static void finish(struct connection *conn) {
    if (atomic_fetch_sub(&conn->pumps_running, 1) == 1) {
        close(conn->client);
        close(conn->upstream);
        free(conn);
    }
}

static void *pump(void *arg) {
    struct pump_ends ends = *(struct pump_ends *)arg;
    free(arg);
    char buf[65536];
    ssize_t n;
    while ((n = read(ends.from, buf, sizeof buf)) > 0) {
        for (ssize_t off = 0; off < n;) {
            ssize_t w = write(ends.to, buf + off, (size_t)(n - off));
            if (w <= 0)
                goto done;
            off += w;
        }
    }
done:
    shutdown(ends.to, SHUT_WR);
    finish(ends.conn);
    return NULL;
}

static long delay_ns; /* one-way delay of the wire; 0: a plain hop */

struct piece {
    struct piece *next;
    struct timespec due;
    size_t len;
    char data[];
};

struct wire { /* one direction of a delayed connection: reader -> queue -> writer */
    struct connection *conn;
    int from, to;
    pthread_mutex_t lock;
    pthread_cond_t ready;
    struct piece *head, *tail;
    int ended; /* the reader saw the end of its side, or an error */
};

static struct timespec received_at(struct msghdr *msg) {
    for (struct cmsghdr *c = CMSG_FIRSTHDR(msg); c != NULL; c = CMSG_NXTHDR(msg, c))
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS) {
            struct timespec ts;
            memcpy(&ts, CMSG_DATA(c), sizeof ts);
            return ts;
        }
    struct timespec now; /* no stamp (should not happen): now is the best guess */
    clock_gettime(CLOCK_REALTIME, &now);
    return now;
}

static void *wire_reader(void *arg) {
    struct wire *w = arg;
    char buf[65536], control[CMSG_SPACE(sizeof(struct timespec))];
    for (;;) {
        struct iovec iov = {.iov_base = buf, .iov_len = sizeof buf};
        struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control,
                             .msg_controllen = sizeof control};
        ssize_t n = recvmsg(w->from, &msg, 0);
        if (n <= 0)
            break;
        struct piece *p = malloc(sizeof *p + (size_t)n);
        if (p == NULL)
            break;
        p->next = NULL;
        p->len = (size_t)n;
        memcpy(p->data, buf, (size_t)n);
        p->due = received_at(&msg);
        p->due.tv_nsec += delay_ns % 1000000000L;
        p->due.tv_sec += delay_ns / 1000000000L + p->due.tv_nsec / 1000000000L;
        p->due.tv_nsec %= 1000000000L;
        pthread_mutex_lock(&w->lock);
        if (w->tail != NULL)
            w->tail->next = p;
        else
            w->head = p;
        w->tail = p;
        pthread_cond_signal(&w->ready);
        pthread_mutex_unlock(&w->lock);
    }
    pthread_mutex_lock(&w->lock);
    w->ended = 1;
    pthread_cond_signal(&w->ready);
    pthread_mutex_unlock(&w->lock);
    return NULL;
}

static int write_all(int to, const char *data, size_t len) {
    for (size_t off = 0; off < len;) {
        ssize_t n = write(to, data + off, len - off);
        if (n <= 0)
            return -1;
        off += (size_t)n;
    }
    return 0;
}

static void *wire_writer(void *arg) {
    struct wire *w = arg;
    pthread_t reader;
    int one = 1;
    setsockopt(w->from, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one);
    int started = pthread_create(&reader, NULL, wire_reader, w) == 0, failed = !started;
    while (!failed) {
        pthread_mutex_lock(&w->lock);
        while (w->head == NULL && !w->ended)
            pthread_cond_wait(&w->ready, &w->lock);
        struct piece *p = w->head;
        if (p != NULL && (w->head = p->next) == NULL)
            w->tail = NULL;
        pthread_mutex_unlock(&w->lock);
        if (p == NULL)
            break; /* ended and drained */
        while (clock_nanosleep(CLOCK_REALTIME, TIMER_ABSTIME, &p->due, NULL) != 0)
            ;
        failed = write_all(w->to, p->data, p->len) != 0;
        free(p);
    }
    if (failed)
        shutdown(w->from, SHUT_RD); /* wakes the reader */
    if (started)
        pthread_join(reader, NULL);
    for (struct piece *p = w->head, *next; p != NULL; p = next) {
        next = p->next;
        free(p);
    }
    shutdown(w->to, SHUT_WR);
    pthread_mutex_destroy(&w->lock);
    pthread_cond_destroy(&w->ready);
    struct connection *conn = w->conn;
    free(w);
    finish(conn);
    return NULL;
}

static int start_pump(struct connection *conn, int from, int to) {
    pthread_t thread;
    if (delay_ns > 0) {
        struct wire *w = calloc(1, sizeof *w);
        if (w == NULL)
            return -1;
        *w = (struct wire){.conn = conn, .from = from, .to = to};
        pthread_mutex_init(&w->lock, NULL);
        pthread_cond_init(&w->ready, NULL);
        if (pthread_create(&thread, NULL, wire_writer, w) != 0) {
            free(w);
            return -1;
        }
        return pthread_detach(thread);
    }
    struct pump_ends *ends = malloc(sizeof *ends);
    if (ends == NULL)
        return -1;
    *ends = (struct pump_ends){.conn = conn, .from = from, .to = to};
    if (pthread_create(&thread, NULL, pump, ends) != 0) {
        free(ends);
        return -1;
    }
    return pthread_detach(thread);
}

static struct sockaddr_in loopback(int port) {
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return addr;
}

int main(int argc, char **argv) {
    if (argc != 3 && argc != 4) {
        fprintf(stderr, "usage: %s LISTEN_PORT UPSTREAM_PORT [ONE_WAY_DELAY_US]\n", argv[0]);
        return 2;
    }
    delay_ns = argc == 4 ? atol(argv[3]) * 1000L : 0;
    int port = atoi(argv[1]), upstream_port = atoi(argv[2]), one = 1;
    int listener = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = loopback(port);
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(listener, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(listener, 1024) != 0) {
        perror("native_hop: listen");
        return 1;
    }
    printf("READY http://127.0.0.1:%d\n", port);
    fflush(stdout);
    for (;;) {
        int client = accept(listener, NULL, NULL);
        if (client < 0)
            continue;
        int upstream = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in to = loopback(upstream_port);
        if (connect(upstream, (struct sockaddr *)&to, sizeof to) != 0) {
            close(client);
            close(upstream);
            continue;
        }
        setsockopt(client, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        setsockopt(upstream, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct connection *conn = malloc(sizeof *conn);
        if (conn == NULL) {
            close(client);
            close(upstream);
            continue;
        }
        conn->client = client;
        conn->upstream = upstream;
        atomic_init(&conn->pumps_running, 2);
        if (start_pump(conn, client, upstream) != 0) {
            close(client);
            close(upstream);
            free(conn);
            continue;
        }
        if (start_pump(conn, upstream, client) != 0) {
            /* the first pump sees the shutdown, finishes and closes both */
            shutdown(client, SHUT_RDWR);
            atomic_fetch_sub(&conn->pumps_running, 1);
        }
    }
}
