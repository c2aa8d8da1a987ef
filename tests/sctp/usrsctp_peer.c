/*
 * A scriptable SCTP peer on usrsctp with UDP encapsulation (RFC 6951), for interop tests
 * and the benchmark.  Built at test time; never committed as a binary.
 *
 *   usrsctp_peer UDP_PORT        then commands on stdin, one per line:
 *
 *   LISTEN SCTP_PORT             bind and listen (one-to-many socket)
 *   CONNECT IPV4 SCTP_PORT UDP   set the peer's UDP port, connect
 *   ECHO 0|1, QUIET 0|1          echo messages back / stop printing MSG lines
 *   SEND ASSOC STREAM PPID UNORDERED LEN SEED   LEN bytes, byte i = (SEED + i) & 0xff
 *   BULK ASSOC STREAM COUNT LEN  COUNT messages of LEN bytes (SEED 0)
 *   WAITFOR COUNT                until COUNT messages have arrived in all
 *   UDPBUF BYTES                 buffers of usrsctp's UDP socket (default 256 KiB)
 *   MTU BYTES                    path MTU for associations set up from now on (usrsctp
 *                                assumes 1500 on UDP paths; loopback's is 65536)
 *   SHUTDOWN ASSOC, ABORT ASSOC REASON, STATS, QUIT
 *
 * Output lines: READY; OK CMD / ERR CMD TEXT; EVENT NAME assoc=ID out=N in=N;
 * MSG assoc=ID stream=S ppid=P unordered=U len=N crc=HEX (zlib's CRC-32);
 * STATS msgs=N bytes=N.
 */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
#include <usrsctp.h>

static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;
static int echo_mode, quiet_mode;
static unsigned long long total_msgs, total_bytes;
static pthread_mutex_t count_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t count_cond = PTHREAD_COND_INITIALIZER;
static unsigned char *partial;
static size_t partial_len, partial_cap;
static uint32_t crc_table[256];
static uint16_t udp_port;

static void say(const char *format, ...)
{
	va_list args;
	pthread_mutex_lock(&out_lock);
	va_start(args, format);
	vprintf(format, args);
	va_end(args);
	putchar('\n');
	fflush(stdout);
	pthread_mutex_unlock(&out_lock);
}

static void crc_init(void)
{
	for (uint32_t n = 0; n < 256; n++) {
		uint32_t c = n;
		for (int k = 0; k < 8; k++)
			c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
		crc_table[n] = c;
	}
}

static uint32_t crc32_of(const unsigned char *data, size_t len)
{
	uint32_t c = 0xFFFFFFFFu;
	for (size_t i = 0; i < len; i++)
		c = crc_table[(c ^ data[i]) & 0xFF] ^ (c >> 8);
	return c ^ 0xFFFFFFFFu;
}

static const char *change_name(uint16_t state)
{
	switch (state) {
	case SCTP_COMM_UP: return "COMM_UP";
	case SCTP_COMM_LOST: return "COMM_LOST";
	case SCTP_RESTART: return "RESTART";
	case SCTP_SHUTDOWN_COMP: return "SHUTDOWN_COMP";
	case SCTP_CANT_STR_ASSOC: return "CANT_STR_ASSOC";
	default: return "OTHER";
	}
}

static void notification(const union sctp_notification *n)
{
	if (n->sn_header.sn_type == SCTP_ASSOC_CHANGE) {
		const struct sctp_assoc_change *ac = &n->sn_assoc_change;
		say("EVENT %s assoc=%u out=%u in=%u", change_name(ac->sac_state),
		    (unsigned)ac->sac_assoc_id, ac->sac_outbound_streams, ac->sac_inbound_streams);
	} else if (n->sn_header.sn_type == SCTP_SHUTDOWN_EVENT) {
		say("SHUTDOWN_EVENT assoc=%u", (unsigned)n->sn_shutdown_event.sse_assoc_id);
	}
}

static int on_receive(struct socket *sock, union sctp_sockstore addr, void *data,
		      size_t len, struct sctp_rcvinfo rcv, int flags, void *ulp_info)
{
	(void)addr; (void)ulp_info;
	if (data == NULL)
		return 1;
	if (flags & MSG_NOTIFICATION) {
		notification((const union sctp_notification *)data);
		free(data);
		return 1;
	}
	if (partial_len + len > partial_cap) {
		partial_cap = (partial_len + len) * 2;
		partial = realloc(partial, partial_cap);
	}
	memcpy(partial + partial_len, data, len);
	partial_len += len;
	free(data);
	if (!(flags & MSG_EOR))
		return 1;
	int unordered = (rcv.rcv_flags & SCTP_UNORDERED) != 0;
	pthread_mutex_lock(&count_lock);
	total_msgs++;
	total_bytes += partial_len;
	pthread_cond_broadcast(&count_cond);
	pthread_mutex_unlock(&count_lock);
	if (!quiet_mode)
		say("MSG assoc=%u stream=%u ppid=%u unordered=%d len=%zu crc=%08x",
		    (unsigned)rcv.rcv_assoc_id, rcv.rcv_sid, ntohl(rcv.rcv_ppid), unordered,
		    partial_len, crc32_of(partial, partial_len));
	if (echo_mode) {
		struct sctp_sndinfo snd = {0};
		snd.snd_sid = rcv.rcv_sid;
		snd.snd_ppid = rcv.rcv_ppid;
		snd.snd_assoc_id = rcv.rcv_assoc_id;
		snd.snd_flags = unordered ? SCTP_UNORDERED : 0;
		if (usrsctp_sendv(sock, partial, partial_len, NULL, 0, &snd, sizeof snd,
				  SCTP_SENDV_SNDINFO, 0) < 0)
			say("ERR ECHO %s", strerror(errno));
	}
	partial_len = 0;
	return 1;
}

/* usrsctp sockets with a receive callback do not block in send: wait for its send
 * callback (buffer space) and try again. */
static pthread_mutex_t space_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t space_cond = PTHREAD_COND_INITIALIZER;

static int on_space(struct socket *sock, uint32_t sb_free, void *ulp_info)
{
	(void)sock; (void)sb_free; (void)ulp_info;
	pthread_mutex_lock(&space_lock);
	pthread_cond_broadcast(&space_cond);
	pthread_mutex_unlock(&space_lock);
	return 1;
}

static int send_message(struct socket *sock, unsigned assoc, unsigned stream, unsigned ppid,
			int unordered, const void *data, size_t len, int flags)
{
	struct sctp_sndinfo snd = {0};
	snd.snd_sid = (uint16_t)stream;
	snd.snd_ppid = htonl(ppid);
	snd.snd_assoc_id = assoc;
	snd.snd_flags = (uint16_t)((unordered ? SCTP_UNORDERED : 0) | flags);
	for (int tries = 0; tries < 100000; tries++) {
		if (usrsctp_sendv(sock, data, len, NULL, 0, &snd, sizeof snd,
				  SCTP_SENDV_SNDINFO, 0) >= 0)
			return 0;
		if (errno != EAGAIN && errno != EWOULDBLOCK)
			return -1;
		struct timespec until;
		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_nsec += 2000000;
		if (until.tv_nsec >= 1000000000) {
			until.tv_sec++;
			until.tv_nsec -= 1000000000;
		}
		pthread_mutex_lock(&space_lock);
		pthread_cond_timedwait(&space_cond, &space_lock, &until);
		pthread_mutex_unlock(&space_lock);
	}
	errno = ETIMEDOUT;
	return -1;
}

static unsigned char *pattern(size_t len, unsigned seed)
{
	unsigned char *data = malloc(len ? len : 1);
	for (size_t i = 0; i < len; i++)
		data[i] = (unsigned char)(seed + i);
	return data;
}

/* usrsctp sizes its UDP socket's receive buffer at 256 KiB: two 64 KiB datagrams.  The
 * benchmark gives it what our endpoint asks for, so that both sides have the same. */
static void grow_udp_buffers(uint16_t port, int size)
{
	for (int fd = 3; fd < 1024; fd++) {
		struct sockaddr_storage ss;
		socklen_t len = sizeof ss;
		int type = 0;
		socklen_t tlen = sizeof type;
		if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0 ||
		    getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tlen) < 0 || type != SOCK_DGRAM)
			continue;
		uint16_t bound = ss.ss_family == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port
			: ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port : 0;
		if (ntohs(bound) != port)
			continue;
		if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size) < 0)
			setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
		setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
	}
}

static int run_command(struct socket *sock, char *line)
{
	char cmd[32] = "", text[512] = "";
	unsigned a = 0, b = 0, c = 0, d = 0, e = 0, f = 0;
	if (sscanf(line, "%31s", cmd) != 1)
		return 0;
	if (!strcmp(cmd, "LISTEN") && sscanf(line, "%*s %u", &a) == 1) {
		struct sockaddr_in sin = {0};
		sin.sin_family = AF_INET;
		sin.sin_port = htons((uint16_t)a);
		sin.sin_addr.s_addr = htonl(INADDR_ANY);
		if (usrsctp_bind(sock, (struct sockaddr *)&sin, sizeof sin) < 0 ||
		    usrsctp_listen(sock, 1) < 0)
			return -1;
	} else if (!strcmp(cmd, "CONNECT") && sscanf(line, "%*s %255s %u %u", text, &a, &b) == 3) {
		struct sctp_udpencaps encaps = {0};
		struct sockaddr_in sin = {0};
		sin.sin_family = AF_INET;
		sin.sin_port = htons((uint16_t)a);
		if (inet_pton(AF_INET, text, &sin.sin_addr) != 1) {
			errno = EINVAL;
			return -1;
		}
		memcpy(&encaps.sue_address, &sin, sizeof sin);
		encaps.sue_port = htons((uint16_t)b);
		if (usrsctp_setsockopt(sock, IPPROTO_SCTP, SCTP_REMOTE_UDP_ENCAPS_PORT, &encaps,
				       sizeof encaps) < 0 ||
		    usrsctp_connect(sock, (struct sockaddr *)&sin, sizeof sin) < 0)
			if (errno != EINPROGRESS)
				return -1;
	} else if (!strcmp(cmd, "ECHO") && sscanf(line, "%*s %u", &a) == 1) {
		echo_mode = (int)a;
	} else if (!strcmp(cmd, "QUIET") && sscanf(line, "%*s %u", &a) == 1) {
		quiet_mode = (int)a;
	} else if (!strcmp(cmd, "SEND") &&
		   sscanf(line, "%*s %u %u %u %u %u %u", &a, &b, &c, &d, &e, &f) == 6) {
		unsigned char *data = pattern(e, f);
		int rc = send_message(sock, a, b, c, (int)d, data, e, 0);
		free(data);
		if (rc < 0)
			return -1;
	} else if (!strcmp(cmd, "BULK") && sscanf(line, "%*s %u %u %u %u", &a, &b, &c, &d) == 4) {
		unsigned char *data = pattern(d, 0);
		for (unsigned i = 0; i < c; i++)
			if (send_message(sock, a, b, 0, 0, data, d, 0) < 0) {
				free(data);
				return -1;
			}
		free(data);
	} else if (!strcmp(cmd, "SHUTDOWN") && sscanf(line, "%*s %u", &a) == 1) {
		if (send_message(sock, a, 0, 0, 0, "", 0, SCTP_EOF) < 0)
			return -1;
	} else if (!strcmp(cmd, "ABORT") && sscanf(line, "%*s %u %255s", &a, text) == 2) {
		if (send_message(sock, a, 0, 0, 0, text, strlen(text), SCTP_ABORT) < 0)
			return -1;
	} else if (!strcmp(cmd, "WAITFOR") && sscanf(line, "%*s %u", &a) == 1) {
		pthread_mutex_lock(&count_lock);
		while (total_msgs < a)
			pthread_cond_wait(&count_cond, &count_lock);
		pthread_mutex_unlock(&count_lock);
	} else if (!strcmp(cmd, "MTU") && sscanf(line, "%*s %u", &a) == 1) {
		struct sctp_paddrparams params = {0};
		params.spp_assoc_id = SCTP_FUTURE_ASSOC;
		params.spp_pathmtu = a;
		params.spp_flags = SPP_PMTUD_DISABLE;
		if (usrsctp_setsockopt(sock, IPPROTO_SCTP, SCTP_PEER_ADDR_PARAMS, &params,
				       sizeof params) < 0)
			return -1;
	} else if (!strcmp(cmd, "UDPBUF") && sscanf(line, "%*s %u", &a) == 1) {
		grow_udp_buffers(udp_port, (int)a);
	} else if (!strcmp(cmd, "STATS")) {
		say("STATS msgs=%llu bytes=%llu", total_msgs, total_bytes);
	} else if (!strcmp(cmd, "QUIT")) {
		return 1;
	} else {
		errno = EINVAL;
		return -1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s UDP_PORT < commands\n", argv[0]);
		return 2;
	}
	crc_init();
	udp_port = (uint16_t)atoi(argv[1]);
	usrsctp_init(udp_port, NULL, NULL);
	/* usrsctp leaves the CRC out on loopback by default; RFC 9260 requires it. */
	usrsctp_sysctl_set_sctp_no_csum_on_loopback(0);
	/* Socket buffers of 4 MiB like ours (usrsctp's default is a fraction of that). */
	usrsctp_sysctl_set_sctp_sendspace(4 << 20);
	usrsctp_sysctl_set_sctp_recvspace(4 << 20);
	struct socket *sock = usrsctp_socket(AF_INET, SOCK_SEQPACKET, IPPROTO_SCTP, on_receive,
					     on_space, 1 << 20, NULL);
	if (sock == NULL) {
		perror("usrsctp_socket");
		return 1;
	}
	struct sctp_initmsg init = {0};
	init.sinit_num_ostreams = 10;
	init.sinit_max_instreams = 10;
	usrsctp_setsockopt(sock, IPPROTO_SCTP, SCTP_INITMSG, &init, sizeof init);
	uint16_t kinds[] = {SCTP_ASSOC_CHANGE, SCTP_SHUTDOWN_EVENT};
	for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
		struct sctp_event event = {0};
		event.se_assoc_id = SCTP_ALL_ASSOC;
		event.se_type = kinds[i];
		event.se_on = 1;
		usrsctp_setsockopt(sock, IPPROTO_SCTP, SCTP_EVENT, &event, sizeof event);
	}
	int on = 1, buffer = 4 << 20;
	usrsctp_setsockopt(sock, IPPROTO_SCTP, SCTP_RECVRCVINFO, &on, sizeof on);
	usrsctp_setsockopt(sock, SOL_SOCKET, SO_SNDBUF, &buffer, sizeof buffer);
	usrsctp_setsockopt(sock, SOL_SOCKET, SO_RCVBUF, &buffer, sizeof buffer);
	say("READY");
	char line[1024];
	int rc = 0;
	while (rc != 1 && fgets(line, sizeof line, stdin) != NULL) {
		char cmd[32] = "";
		sscanf(line, "%31s", cmd);
		rc = run_command(sock, line);
		if (rc < 0)
			say("ERR %s %s", cmd, strerror(errno));
		else if (cmd[0])
			say("OK %s", cmd);
	}
	usrsctp_close(sock);
	for (int i = 0; i < 50 && usrsctp_finish() != 0; i++)
		usleep(100000);
	return 0;
}
