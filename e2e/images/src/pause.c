/* pause: the pod infrastructure process of registry.k8s.io/pause look-alikes. It holds the pod's
 * namespaces: it sleeps in pause(), reaps children when it is PID 1 of a shared PID namespace, and
 * exits 0 on SIGINT or SIGTERM. It must never do anything else (no files, no network).
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_term(int sig) {
    (void)sig;
    _exit(0);
}

static void on_chld(int sig) {
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "-v") == 0) {
        puts("pause (berth test image)");
        return 0;
    }
    if (getpid() != 1) {
        /* Upstream warns the same way: outside PID 1 it cannot reap the pod's orphans. */
        fprintf(stderr, "Warning: pause should be the first process\n");
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_term;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sa.sa_handler = on_chld;
    sa.sa_flags = SA_NOCLDSTOP | SA_RESTART;
    sigaction(SIGCHLD, &sa, NULL);
    for (;;)
        pause();
    return 42;
}
