#include "tests/testing/tcp_relay.h"

#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

namespace moe_router::testing {
namespace {

sockaddr_in Loopback(int port) {
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  return addr;
}

}  // namespace

TcpRelay::TcpRelay(int target_port) : target_port_(target_port) {
  listener_ = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr = Loopback(0);
  bind(listener_, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  listen(listener_, 16);
  socklen_t len = sizeof addr;
  getsockname(listener_, reinterpret_cast<sockaddr*>(&addr), &len);
  port_ = ntohs(addr.sin_port);
  acceptor_ = std::thread([this] { Accept(); });
}

TcpRelay::~TcpRelay() {
  stopping_.store(true);
  acceptor_.join();
  CutAll();
  absl::MutexLock lock(&mu_);
  for (auto& c : connections_) {
    c->pump.join();
    close(c->client);
    close(c->server);
  }
  close(listener_);
}

void TcpRelay::Accept() {
  while (!stopping_.load()) {
    pollfd p{listener_, POLLIN, 0};
    if (poll(&p, 1, 50) <= 0) continue;
    const int client = accept(listener_, nullptr, nullptr);
    if (client < 0) continue;
    const int server = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr = Loopback(target_port_);
    if (connect(server, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
      close(server);
      close(client);
      continue;
    }
    absl::MutexLock lock(&mu_);
    auto c = std::make_unique<Connection>();
    c->client = client;
    c->server = server;
    Connection* raw = c.get();
    c->pump = std::thread([this, raw] { Pump(raw); });
    connections_.push_back(std::move(c));
  }
}

void TcpRelay::Pump(Connection* c) {
  char buf[16384];
  pollfd fds[2] = {{c->client, POLLIN, 0}, {c->server, POLLIN, 0}};
  while (true) {
    if (poll(fds, 2, -1) < 0) break;
    bool closed = false;
    for (int i = 0; i < 2; ++i) {
      if (fds[i].revents == 0) continue;
      const ssize_t n = read(fds[i].fd, buf, sizeof buf);
      if (n <= 0) {
        closed = true;
        break;
      }
      const bool to_server = i == 0;
      if ((to_server ? swallow_requests_ : swallow_replies_).load()) continue;
      const int out = to_server ? c->server : c->client;
      for (ssize_t sent = 0; sent < n;) {
        const ssize_t w = write(out, buf + sent, static_cast<size_t>(n - sent));
        if (w <= 0) {
          closed = true;
          break;
        }
        sent += w;
      }
    }
    if (closed) break;
  }
  shutdown(c->client, SHUT_RDWR);
  shutdown(c->server, SHUT_RDWR);
}

void TcpRelay::CutAll() {
  swallow_replies_.store(false);
  swallow_requests_.store(false);
  absl::MutexLock lock(&mu_);
  for (auto& c : connections_) {
    // The pump sees both ends close and stops; the descriptors are closed
    // once it has.
    shutdown(c->client, SHUT_RDWR);
    shutdown(c->server, SHUT_RDWR);
  }
}

}  // namespace moe_router::testing
