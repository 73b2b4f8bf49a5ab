//! The etcd store (replicated): see `serve --etcd`.
