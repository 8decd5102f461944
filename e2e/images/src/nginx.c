/* nginx: the master process of the nginx look-alike images. What the specs use of nginx is an HTTP
 * server on one port, a process named "nginx" (pidof), "master process" in its command line and its
 * pid in /var/run/nginx.pid; the serving itself is busybox httpd, run as this process's one child.
 * The port is $NGINX_PORT (default 80), the document root /usr/share/nginx/html. SIGTERM, SIGINT and
 * SIGQUIT stop both; if httpd dies, so does the master. It must never need anything but /bin/httpd.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define SELF "/usr/sbin/nginx"
#define MASTER "nginx: master process nginx -g daemon off;"
#define PIDFILE "/var/run/nginx.pid"

static volatile sig_atomic_t stop;

static void on_stop(int sig) {
    (void)sig;
    stop = 1;
}

int main(int argc, char **argv) {
    (void)argc;
    if (strcmp(argv[0], MASTER) != 0) {
        /* Re-exec under the master's name: /proc/<pid>/cmdline is argv, and the original argv is
         * too short to be overwritten in place. Exec'ing SELF keeps the process name "nginx". */
        char *args[] = {MASTER, NULL};
        execv(SELF, args);
        perror("nginx: exec " SELF);
        return 1;
    }
    const char *port = getenv("NGINX_PORT");
    if (port == NULL || *port == '\0')
        port = "80";

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGQUIT, &sa, NULL);

    pid_t worker = fork();
    if (worker < 0) {
        perror("nginx: fork");
        return 1;
    }
    if (worker == 0) {
        execl("/bin/httpd", "httpd", "-f", "-p", port, "-h", "/usr/share/nginx/html", (char *)NULL);
        perror("nginx: exec /bin/httpd");
        _exit(1);
    }
    FILE *f = fopen(PIDFILE, "w");
    if (f == NULL || fprintf(f, "%d\n", (int)getpid()) < 0 || fclose(f) != 0) {
        perror("nginx: writing " PIDFILE);
        kill(worker, SIGTERM);
        return 1;
    }
    fprintf(stderr, "nginx look-alike: master %d, worker %d (busybox httpd) on port %s\n", (int)getpid(),
            (int)worker, port);

    int status = 0;
    for (;;) {
        pid_t got = waitpid(-1, &status, 0);
        if (got == worker)
            break;
        if (got < 0 && errno == EINTR && stop) {
            kill(worker, SIGTERM);
            waitpid(worker, &status, 0);
            unlink(PIDFILE);
            return 0;
        }
        if (got < 0 && errno != EINTR)
            break;
    }
    unlink(PIDFILE);
    return stop ? 0 : 1;
}
