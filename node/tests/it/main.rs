//! The node's integration tests: in-process nodes on port 0 (`http`), and the `unitas` binary as
//! an operator runs it (`cli`).

mod cli;
mod http;
mod support;
