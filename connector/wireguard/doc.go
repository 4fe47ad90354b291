// Package wireguard is appconnector's WireGuard plumbing, shared by the
// connector, the client, the test peer and the harness: wg-quick(8)
// configuration files and keys, a bind on one host address, a read-only
// UAPI server for `wg show`, and [NewDevice], the one constructor of a
// userspace device (wireguard-go over a tun.Device whose packets a
// netstack.Stack handles).
//
// A plain wg-quick file loads unchanged: keys that only wg-quick acts on
// (DNS, Table, PreUp, PostUp, PreDown, PostDown, SaveConfig, FwMark) are
// accepted and reported as [Warning]s; any other unknown key is an error
// naming the file, line and key. [Config.UAPI] renders a config as the text
// that wireguard-go's Device.IpcSet accepts.
//
// One key is an appconnector extension: Tags in [Peer] (see [Peer.Tags]).
// Files that use it are specific to appconnector, since wg(8) and
// wg-quick(8) reject unknown keys.
package wireguard
