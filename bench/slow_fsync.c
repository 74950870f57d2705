/* Makes every fsync/fdatasync sleep first, like a spinning disk: LD_PRELOAD it into a process.
 * SLOW_FSYNC_MS sets the delay (default 5). Built by the bench with gcc; product code is untouched. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <time.h>

static long delay_ns(void) {
    static long ns = -1;
    if (ns < 0) {
        const char *text = getenv("SLOW_FSYNC_MS");
        ns = (long)((text ? atof(text) : 5.0) * 1e6);
    }
    return ns;
}

static void slow_down(void) {
    struct timespec ts = {delay_ns() / 1000000000L, delay_ns() % 1000000000L};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

int fsync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    slow_down();
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    slow_down();
    return real(fd);
}
