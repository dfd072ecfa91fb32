/*!
Peer-to-peer distribution of registry blobs (and of any HTTP file) for wharf, in the spirit of Dragonfly and Kraken.

- A **task** is what a swarm shares: a registry blob (its id is the blob's digest, so one layer pulled through
  different names is one task) or a file URL. Its bytes are cut into **pieces** ([`piece`]) of a few MiB.
- **`wharf scheduler`** ([`scheduler`]) keeps soft state: which node holds which piece of which task, and which
  node fetches which piece from the origin. It answers a node's "I need these pieces" with a source per piece: a
  peer that holds it (the least loaded one), the origin (granted to exactly one node per piece at a time, so each
  piece leaves the origin about once), or "wait". Several schedulers share the work by rendezvous hashing of the
  task id ([`hrw`]); a restarted scheduler learns everything again from announcements.
- **`wharf node`** ([`node`]) is a registry mirror for the local engine; it downloads blobs piece by piece from peers
  and the origin, verifies every piece with SHA-256 and the whole blob against its digest, streams bytes to the
  engine in order as they arrive, and serves its verified pieces to peers.

The wire types shared by both sides are in [`proto`].
*/

pub mod error;
pub mod get;
pub mod hrw;
pub mod node;
pub mod piece;
pub mod preheat;
pub mod proto;
pub mod ratelimit;
pub mod scheduler;
mod wait;

pub use error::P2pError;
