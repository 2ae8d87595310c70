//! Conformance of a running node, judged by independent implementations.

mod foundation;
