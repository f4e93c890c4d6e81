//! Tests against real `flotilla server` processes: the status port and the deployment files
//! (issue 10).

mod observability;
mod support;
