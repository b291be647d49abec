/* The native floor: one more process hop that does nothing but copy bytes, in C (two blocking
 * threads per connection, TCP_NODELAY both ways). What it adds is what any gateway, Go or Rust
 * included, pays on this machine before doing any work. Compiled by the benchmark when a C
 * compiler is at hand:
 *
 *     cc -O2 -pthread -o native_hop bench/native_hop.c
 *     ./native_hop 8992 8991     # listen port, upstream port; prints READY http://127.0.0.1:8992
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

struct connection {
    int client, upstream;
    atomic_int pumps_running; /* the second pump to finish closes both sockets */
};

struct pump_ends {
    struct connection *conn;
    int from, to;
};

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
    if (atomic_fetch_sub(&ends.conn->pumps_running, 1) == 1) {
        close(ends.conn->client);
        close(ends.conn->upstream);
        free(ends.conn);
    }
    return NULL;
}

static int start_pump(struct connection *conn, int from, int to) {
    struct pump_ends *ends = malloc(sizeof *ends);
    pthread_t thread;
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
    if (argc != 3) {
        fprintf(stderr, "usage: %s LISTEN_PORT UPSTREAM_PORT\n", argv[0]);
        return 2;
    }
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
