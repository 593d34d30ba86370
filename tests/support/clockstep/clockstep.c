/* A preloaded shim that steps a process's wall clock (CLOCK_REALTIME, gettimeofday, time) by
 * the milliseconds written in the file named by CLOCK_STEP_FILE (read again at most every
 * 50 ms); its monotonic clock is left alone. libfaketime does this too, but it cannot start
 * redis-server (jemalloc calls clock_gettime before libfaketime is initialised). The real
 * clock is read with the system call itself: nothing here allocates or resolves symbols. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static long long offset_ns;
static long long checked_ns = -1;

static long long now_ns(clockid_t clock) {
    struct timespec t;
    syscall(SYS_clock_gettime, clock, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static void refresh(void) {
    long long now = now_ns(CLOCK_MONOTONIC);
    if (checked_ns >= 0 && now - checked_ns < 50000000LL) return;
    checked_ns = now;
    const char *path = getenv("CLOCK_STEP_FILE");
    if (!path) return;
    int fd = open(path, O_RDONLY);
    if (fd < 0) return;
    char text[32] = {0};
    ssize_t n = read(fd, text, sizeof(text) - 1);
    close(fd);
    if (n > 0) offset_ns = atoll(text) * 1000000LL;
}

int clock_gettime(clockid_t clock, struct timespec *ts) {
    int result = (int)syscall(SYS_clock_gettime, clock, ts);
    if (result == 0 && (clock == CLOCK_REALTIME || clock == CLOCK_REALTIME_COARSE)) {
        refresh();
        long long v = (long long)ts->tv_sec * 1000000000LL + ts->tv_nsec + offset_ns;
        ts->tv_sec = v / 1000000000LL;
        ts->tv_nsec = v % 1000000000LL;
    }
    return result;
}

int gettimeofday(struct timeval *tv, void *tz) {
    (void)tz;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    tv->tv_sec = ts.tv_sec;
    tv->tv_usec = ts.tv_nsec / 1000;
    return 0;
}

time_t time(time_t *t) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (t) *t = ts.tv_sec;
    return ts.tv_sec;
}
