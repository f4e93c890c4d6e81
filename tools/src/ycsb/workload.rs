//! YCSB's core workloads A-F, with its property names (`-p name=value`) for everything they
//! set: the operation mix, the request distribution, record and field sizes, counts.

use std::collections::BTreeMap;
use std::fmt;

use super::generator::Distribution;

/// One kind of operation, as YCSB names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Op {
    Read,
    Update,
    Insert,
    Scan,
    ReadModifyWrite,
}

impl Op {
    pub const ALL: [Op; 5] = [
        Op::Read,
        Op::Update,
        Op::Insert,
        Op::Scan,
        Op::ReadModifyWrite,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Op::Read => "READ",
            Op::Update => "UPDATE",
            Op::Insert => "INSERT",
            Op::Scan => "SCAN",
            Op::ReadModifyWrite => "READ-MODIFY-WRITE",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A workload: what YCSB's `workloads/workloadX` files set, and the counts.
#[derive(Clone, Debug, PartialEq)]
pub struct Workload {
    pub name: String,
    pub record_count: u64,
    pub operation_count: u64,
    pub field_count: u64,
    pub field_length: u64,
    /// `(op, proportion)`, proportions summing to 1.
    pub mix: Vec<(Op, f64)>,
    pub distribution: Distribution,
    pub max_scan_length: u64,
    /// First record number the load phase inserts (`insertstart`).
    pub insert_start: u64,
}

fn number<T: std::str::FromStr>(
    props: &BTreeMap<String, String>,
    name: &str,
    default: T,
) -> Result<T, String> {
    match props.get(name) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse()
            .map_err(|_| format!("property {name}: {v:?} is not a number")),
    }
}

impl Workload {
    /// Core workload `letter` (a-f) with `props` applied over its defaults.
    ///
    /// # Errors
    /// An unknown workload, a property that does not parse, or proportions that do not add
    /// up to more than 0.
    pub fn core(letter: &str, props: &BTreeMap<String, String>) -> Result<Self, String> {
        let letter = letter.trim().to_ascii_lowercase();
        // (read, update, insert, scan, read-modify-write, distribution), per YCSB's files.
        let (read, update, insert, scan, rmw, dist) = match letter.as_str() {
            "a" => (0.5, 0.5, 0.0, 0.0, 0.0, "zipfian"),
            "b" => (0.95, 0.05, 0.0, 0.0, 0.0, "zipfian"),
            "c" => (1.0, 0.0, 0.0, 0.0, 0.0, "zipfian"),
            "d" => (0.95, 0.0, 0.05, 0.0, 0.0, "latest"),
            "e" => (0.0, 0.0, 0.05, 0.95, 0.0, "zipfian"),
            "f" => (0.5, 0.0, 0.0, 0.0, 0.5, "zipfian"),
            other => return Err(format!("workload {other:?}: one of a, b, c, d, e, f")),
        };
        let proportion = |name: &str, default: f64| number(props, name, default);
        let mix: Vec<(Op, f64)> = [
            (Op::Read, proportion("readproportion", read)?),
            (Op::Update, proportion("updateproportion", update)?),
            (Op::Insert, proportion("insertproportion", insert)?),
            (Op::Scan, proportion("scanproportion", scan)?),
            (
                Op::ReadModifyWrite,
                proportion("readmodifywriteproportion", rmw)?,
            ),
        ]
        .into_iter()
        .filter(|(_, p)| *p > 0.0)
        .collect();
        let total: f64 = mix.iter().map(|(_, p)| p).sum();
        if total <= 0.0 {
            return Err("the operation proportions add up to 0".into());
        }
        let mix = mix.into_iter().map(|(op, p)| (op, p / total)).collect();
        let dist_name = props
            .get("requestdistribution")
            .map_or(dist, String::as_str);
        let distribution = Distribution::parse(
            dist_name,
            number(props, "hotspotdatafraction", 0.2)?,
            number(props, "hotspotopnfraction", 0.8)?,
        )
        .ok_or_else(|| {
            format!("requestdistribution {dist_name:?}: uniform, zipfian, latest or hotspot")
        })?;
        let workload = Self {
            name: letter,
            record_count: number(props, "recordcount", 1000)?,
            operation_count: number(props, "operationcount", 1000)?,
            field_count: number(props, "fieldcount", 10)?,
            field_length: number(props, "fieldlength", 100)?,
            mix,
            distribution,
            max_scan_length: number(props, "maxscanlength", 100)?,
            insert_start: number(props, "insertstart", 0)?,
        };
        if workload.record_count == 0 {
            return Err("recordcount: at least 1".into());
        }
        Ok(workload)
    }

    /// The operation for a uniform fraction `u` in `[0, 1)`.
    pub fn pick(&self, u: f64) -> Op {
        let mut acc = 0.0;
        for (op, p) in &self.mix {
            acc += p;
            if u < acc {
                return *op;
            }
        }
        self.mix.last().map_or(Op::Read, |(op, _)| *op)
    }

    /// Bytes of one record's value (its fields stored together).
    pub fn value_bytes(&self) -> usize {
        (self.field_count * self.field_length) as usize
    }
}

/// YCSB's key for record number `n` (hashed, so inserts do not arrive in key order).
pub fn key_of(n: u64) -> String {
    format!("user{}", super::generator::fnv64(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_workloads_have_ycsbs_mixes_and_properties_override_them() {
        let none = BTreeMap::new();
        let a = Workload::core("a", &none).expect("a");
        assert_eq!(a.mix, vec![(Op::Read, 0.5), (Op::Update, 0.5)]);
        assert_eq!(a.distribution, Distribution::Zipfian);
        let d = Workload::core("D", &none).expect("d");
        assert_eq!(d.distribution, Distribution::Latest);
        let e = Workload::core("e", &none).expect("e");
        assert_eq!(e.pick(0.0), Op::Insert);
        assert_eq!(e.pick(0.5), Op::Scan);
        let f = Workload::core("f", &none).expect("f");
        assert_eq!(f.pick(0.99), Op::ReadModifyWrite);
        let props: BTreeMap<String, String> = [
            ("recordcount", "5000"),
            ("fieldlength", "256"),
            ("fieldcount", "1"),
            ("requestdistribution", "uniform"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let c = Workload::core("c", &props).expect("c");
        assert_eq!((c.record_count, c.value_bytes()), (5000, 256));
        assert_eq!(c.distribution, Distribution::Uniform);
        assert!(Workload::core("g", &none).is_err());
        let bad: BTreeMap<String, String> =
            [("recordcount".to_string(), "many".to_string())].into();
        assert!(Workload::core("a", &bad).is_err());
    }
}
