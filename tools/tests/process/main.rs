//! Tests against real `flotilla server` processes: the status port and the deployment files
//! (issue 10), and the nemesis (issue 11).

mod nemesis;
mod observability;
mod support;
