/* A console in C, as docs/protocol.md section 12 describes it: shm_open + ftruncate + mmap a region,
 * register it, send a SEGMENT whose pixels and outputs live in the region, read the mask where the RESULT
 * says it is. Built and run by tests/runtime/test_shm.py against a real runtime.
 *
 * usage: shm_console ENDPOINT NAME       prints the RESULT header, then "mask_sum N overlay_sum N"
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#if __has_include(<zmq.h>)
#include <zmq.h>
#else /* the few libzmq calls used here, for machines without libzmq's headers */
#define ZMQ_DEALER 5
#define ZMQ_LINGER 17
void *zmq_ctx_new(void);
int zmq_ctx_term(void *context);
void *zmq_socket(void *context, int type);
int zmq_setsockopt(void *socket, int option, const void *value, size_t len);
int zmq_connect(void *socket, const char *endpoint);
int zmq_close(void *socket);
int zmq_send(void *socket, const void *buf, size_t len, int flags);
int zmq_recv(void *socket, void *buf, size_t len, int flags);
#endif

enum { ROWS = 64, COLS = 80, SIZE = 1 << 20, MASK_AT = 65536, OVERLAY_AT = 131072 };

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    const char *endpoint = argv[1], *name = argv[2];

    /* the console's region: created, sized and mapped by the console, which alone unlinks it */
    int fd = shm_open(name, O_CREAT | O_EXCL | O_RDWR, 0600);
    if (fd < 0 || ftruncate(fd, SIZE) != 0) return 3;
    uint8_t *base = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd); /* the mapping keeps the object */
    if (base == MAP_FAILED) return 3;

    void *ctx = zmq_ctx_new();
    void *dealer = zmq_socket(ctx, ZMQ_DEALER);
    int linger = 0;
    zmq_setsockopt(dealer, ZMQ_LINGER, &linger, sizeof linger);
    zmq_connect(dealer, endpoint);
    char msg[2048], reply[65536];

    /* 1. register the region on this connection (again after every reconnect) */
    snprintf(msg, sizeof msg, "{\"version\":1,\"type\":\"SHM_REGISTER\",\"id\":\"r1\",\"name\":\"%s\",\"size\":%d}",
             name, SIZE);
    zmq_send(dealer, msg, strlen(msg), 0);
    int n = zmq_recv(dealer, reply, sizeof reply - 1, 0);
    if (n < 0 || !strstr(reply, "\"SHM_REGIONS\"")) return 4;

    /* 2. the pixels go into the region (here: a ramp, int16 little-endian) ... */
    int16_t *pixels = (int16_t *)base;
    for (int i = 0; i < ROWS * COLS; i++) pixels[i] = (int16_t)(i % 700 - 200);

    /* 3. ... and the SEGMENT says where they are and where the mask and overlay go: one frame, no pixels */
    snprintf(msg, sizeof msg,
             "{\"version\":1,\"type\":\"SEGMENT\",\"id\":\"c1-42\",\"dtype\":\"int16\",\"shape\":[%d,%d],"
             "\"outputs\":[\"mask\",\"overlay\"],"
             "\"pixels_at\":{\"region\":\"%s\",\"offset\":0,\"nbytes\":%d},"
             "\"outputs_at\":{\"mask\":{\"region\":\"%s\",\"offset\":%d,\"nbytes\":%d},"
             "\"overlay\":{\"region\":\"%s\",\"offset\":%d,\"nbytes\":%d}}}",
             ROWS, COLS, name, ROWS * COLS * 2, name, MASK_AT, ROWS * COLS, name, OVERLAY_AT, ROWS * COLS * 3);
    zmq_send(dealer, msg, strlen(msg), 0);

    /* 4. the RESULT is one frame; its "frames" entries say region and offset of each output */
    n = zmq_recv(dealer, reply, sizeof reply - 1, 0);
    if (n < 0) return 5;
    reply[n] = 0;
    printf("%s\n", reply);
    long mask_sum = 0, overlay_sum = 0;
    if (strstr(reply, "\"RESULT\"")) { /* only a RESULT makes the outputs valid */
        for (int i = 0; i < ROWS * COLS; i++) mask_sum += base[MASK_AT + i];
        for (int i = 0; i < ROWS * COLS * 3; i++) overlay_sum += base[OVERLAY_AT + i];
    }
    printf("mask_sum %ld overlay_sum %ld\n", mask_sum, overlay_sum);

    zmq_close(dealer);
    zmq_ctx_term(ctx);
    munmap(base, SIZE);
    shm_unlink(name);
    return 0;
}
