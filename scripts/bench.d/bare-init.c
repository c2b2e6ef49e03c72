/* The bare-kernel baseline for scripts/bench: a trivial static /init that
 * prints one line on the serial console and powers the machine off. The
 * difference between its boot and defib's is what defib itself costs. */
#include <fcntl.h>
#include <string.h>
#include <sys/reboot.h>
#include <unistd.h>

int main(void) {
    const char msg[] = "bare init up\n";
    int fd = open("/dev/ttyS0", O_WRONLY | O_NOCTTY);
    if (fd < 0) fd = open("/dev/console", O_WRONLY | O_NOCTTY);
    if (fd >= 0) write(fd, msg, strlen(msg));
    sync();
    reboot(RB_POWER_OFF);
    return 0;
}
