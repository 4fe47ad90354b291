package connector

import (
	"github.com/appconnector/appconnector/connector/flowlog"
	"github.com/appconnector/appconnector/netstack"
)

// flowRecord writes the stack's record of a flow to the flow log, with
// what only the connector knows: the peer's key and tags, and the app and
// name the destination's route came from. Refusals (and handshakes that
// never completed) are aggregated by the writer.
func (c *Connector) flowRecord(fr netstack.FlowRecord) {
	p := c.peers.lookup(fr.Src.Addr())
	app, domain := c.table.origin(p, fr.Dst.Addr())
	r := flowlog.Record{
		Time: fr.Start.Add(fr.Duration), Peer: p.key, Tags: p.tags, App: app, Domain: domain,
		Proto: fr.Proto.String(), Src: fr.Src, Dst: fr.Dst, Start: fr.Start, Duration: fr.Duration.Seconds(),
		BytesUp: fr.BytesUp, BytesDown: fr.BytesDown, End: fr.End, Reason: fr.Reason,
	}
	switch {
	case fr.End == "":
		r.End = "open"
		c.flowLog.Write(r)
	case fr.End == netstack.EndPolicy, fr.End == netstack.EndLimit, fr.End == netstack.EndDialFailed,
		fr.End == netstack.EndPeerReset && fr.Reason == "handshake":
		c.flowLog.Refused(r)
	default:
		c.flowLog.Write(r)
	}
}
