/* An unmodified C program using the system's libssl, as a native app or a runtime's own TLS
 * does: no lifecycle handler, no seed. It warms up before the snapshot (one outbound TLS
 * connection and a draw), then serves plain HTTP. GET /probe opens an outbound TLS connection to
 * the guest's ClientHello recorder (server name: argv[1]) and answers the next eight RAND_bytes.
 *
 * OpenSSL's functions are declared here rather than included: the test builds this with the
 * host's compiler against the runtime library alone (libssl.so.3), no -dev package. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

typedef struct ssl_ctx_st SSL_CTX;
typedef struct ssl_st SSL;
typedef struct ssl_method_st SSL_METHOD;
const SSL_METHOD *TLS_client_method(void);
SSL_CTX *SSL_CTX_new(const SSL_METHOD *method);
SSL *SSL_new(SSL_CTX *ctx);
int SSL_set_fd(SSL *s, int fd);
long SSL_ctrl(SSL *s, int cmd, long larg, void *parg);
int SSL_connect(SSL *s);
void SSL_free(SSL *s);
int RAND_bytes(unsigned char *buf, int num);
const char *OpenSSL_version(int type);
#define SSL_CTRL_SET_TLSEXT_HOSTNAME 55
#define OPENSSL_VERSION_STRING 6

static SSL_CTX *ctx;
static const char *name;

static void hello(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(8443)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof a) == 0) {
        SSL *s = SSL_new(ctx);
        SSL_set_fd(s, fd);
        SSL_ctrl(s, SSL_CTRL_SET_TLSEXT_HOSTNAME, 0, (void *)name);
        SSL_connect(s); /* fails: the recorder closes after the ClientHello */
        SSL_free(s);
    }
    if (fd >= 0) close(fd);
}

static void rand_hex(char *out) {
    unsigned char b[16];
    RAND_bytes(b, sizeof b);
    for (int i = 0; i < 16; i++) sprintf(out + 2 * i, "%02x", b[i]);
}

int main(int argc, char **argv) {
    name = argc > 1 ? argv[1] : "plain-c";
    ctx = SSL_CTX_new(TLS_client_method());
    char hex[33];
    hello();
    rand_hex(hex);
    int srv = socket(AF_INET, SOCK_STREAM, 0), on = 1;
    setsockopt(srv, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(getenv("PORT")))};
    if (bind(srv, (struct sockaddr *)&a, sizeof a) != 0 || listen(srv, 16) != 0) return 1;
    for (;;) {
        int c = accept(srv, NULL, NULL);
        if (c < 0) continue;
        char req[2048];
        ssize_t n = read(c, req, sizeof req - 1);
        req[n > 0 ? n : 0] = 0;
        char body[1024];
        if (strncmp(req, "GET /probe", 10) == 0) {
            hello();
            /* The next eight draws: the test compares each clone's value with the others'. */
            char draws[8 * 35 + 1] = "";
            for (int i = 0; i < 8; i++) {
                rand_hex(hex);
                snprintf(draws + strlen(draws), sizeof draws - strlen(draws), "%s\"%s\"",
                         i ? "," : "", hex);
            }
            snprintf(body, sizeof body,
                     "{\"runtime\":\"unmodified C, OpenSSL %s\",\"values\":{\"RAND_bytes\":[%s]},"
                     "\"claims\":{\"RAND_bytes\":\"safe\"}}",
                     OpenSSL_version(OPENSSL_VERSION_STRING), draws);
        } else {
            snprintf(body, sizeof body, "{\"ok\":true}");
        }
        char head[128];
        int h = snprintf(head, sizeof head,
                         "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                         strlen(body));
        write(c, head, h);
        write(c, body, strlen(body));
        close(c);
    }
}
