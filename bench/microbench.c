// SPDX-License-Identifier: Apache-2.0
/*
 * microbench: the syscall costs warden's hooks sit on, timed in a tight loop so that interpreter
 * overhead does not drown the few microseconds an LSM program adds.
 *   microbench open PATH N     open(O_RDONLY)+close, N times
 *   microbench exec BINARY N   fork+execve(BINARY)+wait, N times
 *   microbench socket N        socket(AF_INET, SOCK_STREAM)+close, N times
 *   microbench read PATH N     one open, then pread of 1 byte, N times (file_permission's cost)
 *   microbench write PATH N    one open for writing, then pwrite of 1 byte, N times
 * Prints the mean nanoseconds per operation.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

int main(int argc, char **argv)
{
	double start;
	long i, n;

	if (argc < 3)
		return 2;
	n = atol(argv[argc - 1]);
	start = now_ns();
	if (!strcmp(argv[1], "open") && argc == 4) {
		for (i = 0; i < n; i++) {
			int fd = open(argv[2], O_RDONLY);

			if (fd < 0) {
				perror("open");
				return 1;
			}
			close(fd);
		}
	} else if (!strcmp(argv[1], "exec") && argc == 4) {
		for (i = 0; i < n; i++) {
			pid_t pid = fork();
			int status;

			if (pid == 0) {
				execl(argv[2], argv[2], (char *)NULL);
				_exit(127);
			}
			waitpid(pid, &status, 0);
			if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
				fprintf(stderr, "exec failed\n");
				return 1;
			}
		}
	} else if (!strcmp(argv[1], "socket") && argc == 3) {
		for (i = 0; i < n; i++) {
			int fd = socket(AF_INET, SOCK_STREAM, 0);

			if (fd < 0) {
				perror("socket");
				return 1;
			}
			close(fd);
		}
	} else if ((!strcmp(argv[1], "read") || !strcmp(argv[1], "write")) && argc == 4) {
		int writing = !strcmp(argv[1], "write");
		int fd = open(argv[2], writing ? (O_WRONLY | O_CREAT) : O_RDONLY, 0600);
		char byte = 'x';

		if (fd < 0) {
			perror("open");
			return 1;
		}
		start = now_ns(); /* the loop only, not the open */
		for (i = 0; i < n; i++) {
			if ((writing ? pwrite(fd, &byte, 1, 0) : pread(fd, &byte, 1, 0)) != 1) {
				perror(argv[1]);
				return 1;
			}
		}
		close(fd);
	} else {
		return 2;
	}
	printf("%.1f\n", (now_ns() - start) / (double)n);
	return 0;
}
