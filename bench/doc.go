// Command bench measures appconnector's data path against wireguard-go's
// stock userspace stack and plain loopback, in one interleaved run; see
// README.md in this directory.
package main
