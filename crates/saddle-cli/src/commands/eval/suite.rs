//! The attacks `saddle eval --attacks` knows, by name, in either threat model (`--norm`).

use anyhow::{bail, Result};
use saddle_attacks::{
    Apgd, ApgdLoss, Attack, Fab, Fgsm, HopSkipJump, Linf, Loss, Pgd, Square, Targeting,
    ThreatModel, CW_PLUS, L2,
};
use saddle_tensor::Backend;

/// The threat model of an evaluation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Norm {
    /// `‖δ‖∞ ≤ ε`: the paper's threat model.
    Linf,
    /// `‖δ‖₂ ≤ ε`.
    L2,
}

impl Norm {
    /// `"linf"` or `"l2"`, as on the command line and in the JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Norm::Linf => "linf",
            Norm::L2 => "l2",
        }
    }
}

/// A named attack of the evaluation suite.
pub struct NamedAttack<B: Backend> {
    /// Name as given on the command line.
    pub name: String,
    /// What it is, for the table.
    pub description: String,
    /// Its hyperparameters, for the JSON: norm, epsilon, alpha, steps, restarts, random_start,
    /// loss, kappa, targeting, seed (and each attack's own).
    pub params: serde_json::Value,
    /// The attack.
    pub attack: Box<dyn Attack<B>>,
    /// Whether it uses only the model's outputs (no gradients): the sanity check compares what
    /// it finds with what the gradient attacks found.
    pub gradient_free: bool,
}

/// A short decimal for tables (0.3/30 prints as 0.01, not 0.010000001), or k/255 for a
/// multiple of 1/255 that needs more than two decimals (8/255, not 0.0314).
pub fn short(v: f32) -> String {
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    let k = (v * 255.0).round();
    let decimals = s.split_once('.').map_or(0, |(_, d)| d.len());
    if decimals > 2 && k >= 1.0 && (v * 255.0 - k).abs() < 1e-3 {
        format!("{k}/255")
    } else {
        s.to_string()
    }
}

/// Steps and restarts of `pgdK` / `pgdKxR` / `cwK` / `cwKxR` (`rest` is what follows the prefix).
fn steps_and_restarts(rest: &str) -> Option<(usize, usize)> {
    let (k, r) = rest.split_once('x').unwrap_or((rest, "1"));
    match (k.parse(), r.parse()) {
        (Ok(k), Ok(r)) if k > 0 && r > 0 => Some((k, r)),
        _ => None,
    }
}

/// The count after `prefix` in `name` (`default` when nothing follows); `None` when `name` does
/// not start with `prefix`; an error for a count that is not a positive integer.
fn count_after(name: &str, prefix: &str, default: usize, how: &str) -> Result<Option<usize>> {
    let Some(rest) = name.strip_prefix(prefix) else {
        return Ok(None);
    };
    if rest.is_empty() {
        return Ok(Some(default));
    }
    match rest.parse::<usize>() {
        Ok(q) if q > 0 => Ok(Some(q)),
        _ => bail!("unknown attack '{name}': {how}; known: {KNOWN}"),
    }
}

const KNOWN: &str = "fgsm, pgdK, pgdKxR, cw, cwK, cwKxR, cw+, targeted, apgd-ce[N], \
     apgd-dlr[N], apgd-t[N], fab-t[N], square[N], hsj[N] (--norm l2), autoattack, paper";

/// The same attack with twice the steps (PGD, CW, APGD, FAB), for the convergence check; `None`
/// for attacks without a step count to double (FGSM, CW+, targeted, the gradient-free ones).
pub fn doubled(name: &str) -> Option<String> {
    if let Some(rest) = name.strip_prefix("pgd") {
        let (k, r) = steps_and_restarts(rest)?;
        return Some(format!("pgd{}x{r}", 2 * k));
    }
    if name == "cw" {
        return Some("cw80".into());
    }
    if let Some(rest) = name.strip_prefix("cw") {
        let (k, r) = steps_and_restarts(rest)?;
        return Some(format!("cw{}x{r}", 2 * k));
    }
    for prefix in ["apgd-ce", "apgd-dlr", "apgd-t", "fab-t"] {
        if let Ok(Some(k)) = count_after(name, prefix, 100, "") {
            return Some(format!("{prefix}{}", 2 * k));
        }
    }
    None
}

/// The threat model's name for descriptions: `""` for L∞ (the paper's), `", L2"` otherwise.
fn tag(norm: Norm) -> &'static str {
    match norm {
        Norm::Linf => "",
        Norm::L2 => ", L2",
    }
}

/// Adds `"norm"` to an attack's parameters.
fn with_norm(mut params: serde_json::Value, norm: Norm) -> serde_json::Value {
    if let Some(p) = params.as_object_mut() {
        p.insert("norm".into(), norm.as_str().into());
    }
    params
}

/// FAB-T (`fab-t`, `fab-tN`) with AutoAttack's settings: 100 (or N) steps, 9 targets, one
/// restart from the clean image, α_max 0.1, η 1.05, β 0.9.
fn parse_fab<B: Backend>(
    name: &str,
    norm: Norm,
    eps: f32,
    seed: u64,
) -> Result<Option<NamedAttack<B>>> {
    let Some(steps) = count_after(
        name,
        "fab-t",
        100,
        "FAB-T is written fab-t or fab-tN (N steps)",
    )?
    else {
        return Ok(None);
    };
    fn describe<T: ThreatModel>(a: &Fab<T>, seed: u64) -> serde_json::Value {
        serde_json::json!({
            "epsilon": a.threat().eps(), "steps": a.steps(), "restarts": a.restart_count(),
            "random_start": false, "loss": "linearised boundary",
            "target_classes": a.target_count(), "alpha_max": a.alpha_max_value(),
            "eta": a.eta_value(), "beta": a.beta_value(),
            "targeting": "top-ranked wrong classes", "seed": seed,
        })
    }
    let (attack, params): (Box<dyn Attack<B>>, _) = match norm {
        Norm::Linf => {
            let a = Fab::linf(eps, steps)?.seed(seed);
            let p = describe(&a, seed);
            (Box::new(a), p)
        }
        Norm::L2 => {
            let a = Fab::l2(eps, steps)?.seed(seed);
            let p = describe(&a, seed);
            (Box::new(a), p)
        }
    };
    Ok(Some(NamedAttack {
        name: name.to_string(),
        description: format!(
            "FAB-T, {steps} steps, {} targets{}, ε={}",
            params["target_classes"],
            tag(norm),
            short(eps)
        ),
        params: with_norm(params, norm),
        attack,
        gradient_free: false,
    }))
}

/// The Square attack (`square`: AutoAttack's 5,000 queries; `squareN`: N queries), p_init 0.8.
fn parse_square<B: Backend>(
    name: &str,
    norm: Norm,
    eps: f32,
    seed: u64,
) -> Result<Option<NamedAttack<B>>> {
    let Some(queries) = count_after(
        name,
        "square",
        5000,
        "Square is written square or squareN (N queries, e.g. square1000)",
    )?
    else {
        return Ok(None);
    };
    let attack: Box<dyn Attack<B>> = match norm {
        Norm::Linf => Box::new(Square::linf(eps, queries)?.seed(seed)),
        Norm::L2 => Box::new(Square::l2(eps, queries)?.seed(seed)),
    };
    let params = serde_json::json!({
        "epsilon": eps, "steps": queries, "queries": queries, "restarts": 1,
        "random_start": true, "loss": "margin", "p_init": 0.8, "targeting": "untargeted",
        "seed": seed,
    });
    Ok(Some(NamedAttack {
        name: name.to_string(),
        description: format!(
            "Square (gradient-free), {queries} queries, p_init 0.8{}, ε={}",
            tag(norm),
            short(eps)
        ),
        params: with_norm(params, norm),
        attack,
        gradient_free: true,
    }))
}

/// HopSkipJump (`hsj`: 10,000 queries; `hsjN`: N), decision-based, L2 only.
fn parse_hsj<B: Backend>(
    name: &str,
    norm: Norm,
    eps: f32,
    seed: u64,
) -> Result<Option<NamedAttack<B>>> {
    let Some(queries) = count_after(
        name,
        "hsj",
        10_000,
        "HopSkipJump is written hsj or hsjN (N queries, e.g. hsj5000)",
    )?
    else {
        return Ok(None);
    };
    if norm != Norm::L2 {
        bail!("attack '{name}': HopSkipJump is an L2 attack; evaluate it with --norm l2");
    }
    let a = HopSkipJump::l2(eps, queries)?.seed(seed);
    let params = serde_json::json!({
        "epsilon": eps, "steps": queries, "queries": queries, "restarts": 1,
        "random_start": true, "loss": "decision (predicted label only)", "gamma": 1.0,
        "initial_gradient_queries": 100, "max_gradient_queries": 10_000,
        "targeting": "untargeted", "seed": seed,
    });
    Ok(Some(NamedAttack {
        name: name.to_string(),
        description: format!(
            "HopSkipJump (decision-based), {queries} queries, L2, ε={}",
            short(eps)
        ),
        params: with_norm(params, norm),
        attack: Box::new(a),
        gradient_free: true,
    }))
}

/// APGD (`apgd-ce`, `apgd-dlr`, `apgd-t`, each with an optional step count N) with AutoAttack's
/// standard settings: 100 steps, one restart, 9 targets for APGD-T.
fn parse_apgd<B: Backend>(
    name: &str,
    norm: Norm,
    eps: f32,
    seed: u64,
) -> Result<Option<NamedAttack<B>>> {
    const KINDS: [(&str, ApgdLoss, &str, &str); 3] = [
        ("apgd-ce", ApgdLoss::CrossEntropy, "APGD-CE", "xent"),
        ("apgd-dlr", ApgdLoss::Dlr, "APGD-DLR", "dlr"),
        (
            "apgd-t",
            ApgdLoss::DlrTargeted,
            "APGD-T (targeted DLR)",
            "dlr-targeted",
        ),
    ];
    let mut found = None;
    for (prefix, loss, what, loss_name) in KINDS {
        let how = "APGD is written apgd-ce, apgd-dlr or apgd-t, optionally with a step count (apgd-ce200)";
        if let Some(steps) = count_after(name, prefix, 100, how)? {
            found = Some((steps, loss, what, loss_name));
            break;
        }
    }
    let Some((steps, loss, what, loss_name)) = found else {
        return Ok(None);
    };
    fn build<T: ThreatModel>(
        threat: T,
        steps: usize,
        loss: ApgdLoss,
        seed: u64,
    ) -> Result<(Apgd<T>, serde_json::Value)> {
        let a = Apgd::new(threat, steps)?.loss(loss).seed(seed);
        let targets = (loss == ApgdLoss::DlrTargeted).then_some(a.target_count());
        let p = serde_json::json!({
            "restarts": a.restart_count(), "target_classes": targets,
            "checkpoints": a.checkpoints(),
        });
        Ok((a, p))
    }
    let (attack, extra): (Box<dyn Attack<B>>, _) = match norm {
        Norm::Linf => {
            let (a, p) = build(Linf::new(eps)?, steps, loss, seed)?;
            (Box::new(a), p)
        }
        Norm::L2 => {
            let (a, p) = build(L2::new(eps)?, steps, loss, seed)?;
            (Box::new(a), p)
        }
    };
    let targets = extra["target_classes"].as_u64();
    let description = format!(
        "{what}, {steps} steps{}{}, ε={}, random start",
        targets.map_or(String::new(), |t| format!(", {t} targets")),
        tag(norm),
        short(eps)
    );
    let params = serde_json::json!({
        "epsilon": eps, "steps": steps, "restarts": extra["restarts"],
        "random_start": true, "loss": loss_name, "target_classes": extra["target_classes"],
        "initial_step": 2.0 * eps, "momentum": 0.75, "rho": 0.75,
        "checkpoints": extra["checkpoints"],
        "targeting": if targets.is_some() { "top-ranked wrong classes" } else { "untargeted" },
        "seed": seed,
    });
    Ok(Some(NamedAttack {
        name: name.to_string(),
        description,
        params: with_norm(params, norm),
        attack,
        gradient_free: false,
    }))
}

/// (steps, restarts, random start, κ of the CW loss or None for cross-entropy, targeting)
type Setting = (usize, usize, bool, Option<f32>, &'static str);

/// The PGD family (`pgdK[xR]`, `cw`, `cwK[xR]`, `cw+`, `targeted`) in the threat model `threat`.
fn pgd_family<B: Backend, T: ThreatModel>(
    name: &str,
    threat: T,
    alpha: f32,
    seed: u64,
) -> Result<(String, Box<dyn Attack<B>>, Setting)>
where
    Pgd<T>: Attack<B>,
{
    let (e, al) = (short(threat.eps()), short(alpha));
    let pgd = |steps: usize| -> Result<Pgd<T>> {
        Ok(Pgd::new(threat.clone(), alpha, steps)?
            .random_start(true)
            .seed(seed))
    };
    let restarts = |r: usize| {
        if r > 1 {
            format!(", {r} restarts")
        } else {
            String::new()
        }
    };
    Ok(match name {
        "cw" => (
            format!("PGD-40 on the CW loss (κ=0), ε={e}, α={al}"),
            Box::new(pgd(40)?.loss(Loss::Cw { kappa: 0.0 })),
            (40, 1, true, Some(0.0), "untargeted"),
        ),
        "cw+" => (
            format!("PGD-40 on the CW loss (κ=50), ε={e}, α={al}"),
            Box::new(pgd(40)?.loss(CW_PLUS)),
            (40, 1, true, Some(50.0), "untargeted"),
        ),
        "targeted" => (
            format!("targeted PGD-40 to the least-likely class, ε={e}, α={al}"),
            Box::new(pgd(40)?.targeting(Targeting::LeastLikely)),
            (40, 1, true, None, "least-likely"),
        ),
        s if s.starts_with("pgd") => {
            let Some((k, r)) = steps_and_restarts(&s[3..]) else {
                bail!("unknown attack '{s}': PGD is written pgdK or pgdKxR (e.g. pgd40, pgd100x20); known: {KNOWN}")
            };
            (
                format!(
                    "PGD-{k}, {r} restart{}, ε={e}, α={al}, random start",
                    if r > 1 { "s" } else { "" }
                ),
                Box::new(pgd(k)?.restarts(r)),
                (k, r, true, None, "untargeted"),
            )
        }
        s if s.starts_with("cw") => {
            let Some((k, r)) = steps_and_restarts(&s[2..]) else {
                bail!("unknown attack '{s}': PGD on the CW loss is written cwK or cwKxR (e.g. cw30); known: {KNOWN}")
            };
            (
                format!(
                    "PGD-{k} on the CW loss (κ=0){}, ε={e}, α={al}, random start",
                    restarts(r)
                ),
                Box::new(pgd(k)?.restarts(r).loss(Loss::Cw { kappa: 0.0 })),
                (k, r, true, Some(0.0), "untargeted"),
            )
        }
        other => bail!("unknown attack '{other}'; known: {KNOWN}"),
    })
}

/// Parses one attack name of the suite, in the threat model `norm` of radius `eps`.
pub fn parse_attack<B: Backend>(
    name: &str,
    norm: Norm,
    eps: f32,
    alpha: f32,
    seed: u64,
) -> Result<NamedAttack<B>> {
    if let Some(a) = parse_apgd(name, norm, eps, seed)? {
        return Ok(a);
    }
    if let Some(a) = parse_square(name, norm, eps, seed)? {
        return Ok(a);
    }
    if let Some(a) = parse_fab(name, norm, eps, seed)? {
        return Ok(a);
    }
    if let Some(a) = parse_hsj(name, norm, eps, seed)? {
        return Ok(a);
    }
    let (description, attack, (steps, nrestarts, random, kappa, targeting)) = match (name, norm) {
        ("fgsm", Norm::Linf) => (
            format!("FGSM, ε={}", short(eps)),
            Box::new(Fgsm::new(eps)?) as Box<dyn Attack<B>>,
            (1, 1, false, None, "untargeted"),
        ),
        // The L2 fast gradient method: one step of length ε along the normalised gradient.
        ("fgsm", Norm::L2) => (
            format!("FGM (one normalised gradient step), L2, ε={}", short(eps)),
            Box::new(Pgd::l2(eps, eps, 1)?.random_start(false)) as Box<dyn Attack<B>>,
            (1, 1, false, None, "untargeted"),
        ),
        (_, Norm::Linf) => pgd_family(name, Linf::new(eps)?, alpha, seed)?,
        (_, Norm::L2) => {
            let (d, a, s) = pgd_family(name, L2::new(eps)?, alpha, seed)?;
            (d.replacen(", ε=", ", L2, ε=", 1), a, s)
        }
    };
    let step = if name == "fgsm" { eps } else { alpha };
    let params = serde_json::json!({
        "epsilon": eps, "alpha": step, "steps": steps, "restarts": nrestarts,
        "random_start": random, "loss": if kappa.is_some() { "cw" } else { "xent" },
        "kappa": kappa, "targeting": targeting, "seed": seed,
    });
    Ok(NamedAttack {
        name: name.to_string(),
        description,
        params: with_norm(params, norm),
        attack,
        gradient_free: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use saddle_tensor::cpu::Cpu;

    #[test]
    fn doubling_doubles_the_steps_and_keeps_the_restarts() {
        assert_eq!(doubled("pgd40").as_deref(), Some("pgd80x1"));
        assert_eq!(doubled("pgd100x20").as_deref(), Some("pgd200x20"));
        assert_eq!(doubled("cw").as_deref(), Some("cw80"));
        assert_eq!(doubled("cw30").as_deref(), Some("cw60x1"));
        assert_eq!(doubled("apgd-ce").as_deref(), Some("apgd-ce200"));
        assert_eq!(doubled("apgd-t50").as_deref(), Some("apgd-t100"));
        assert_eq!(doubled("fab-t").as_deref(), Some("fab-t200"));
        for fixed in ["fgsm", "cw+", "targeted", "square", "hsj"] {
            assert_eq!(doubled(fixed), None, "{fixed}");
        }
        // Every doubled name parses, to an attack with twice the steps.
        for name in ["pgd40", "cw30", "apgd-ce", "apgd-t", "fab-t"] {
            let twice = doubled(name).unwrap();
            let a = parse_attack::<Cpu>(name, Norm::Linf, 0.3, 0.01, 0).unwrap();
            let b = parse_attack::<Cpu>(&twice, Norm::Linf, 0.3, 0.01, 0).unwrap();
            assert_eq!(
                2 * a.params["steps"].as_u64().unwrap(),
                b.params["steps"].as_u64().unwrap(),
                "{name}"
            );
        }
    }

    #[test]
    fn every_attack_parses_in_both_norms_except_hsj_under_linf() {
        for name in [
            "fgsm",
            "pgd40",
            "pgd10x3",
            "cw",
            "cw+",
            "targeted",
            "apgd-ce",
            "apgd-dlr",
            "apgd-t",
            "fab-t",
            "square100",
        ] {
            for norm in [Norm::Linf, Norm::L2] {
                let a = parse_attack::<Cpu>(name, norm, 0.5, 0.05, 1).unwrap();
                assert_eq!(a.params["norm"], norm.as_str(), "{name}");
                assert_eq!(a.description.contains("L2"), norm == Norm::L2, "{name}");
            }
        }
        let h = parse_attack::<Cpu>("hsj500", Norm::L2, 2.0, 0.1, 0).unwrap();
        assert!(h.gradient_free);
        assert_eq!(h.params["queries"], 500);
        let e = parse_attack::<Cpu>("hsj", Norm::Linf, 0.3, 0.01, 0)
            .err()
            .unwrap();
        assert!(e.to_string().contains("--norm l2"), "{e}");
        for bad in ["hsj0", "apgd-ce0", "fab-tx", "square-1", "pgd"] {
            assert!(
                parse_attack::<Cpu>(bad, Norm::L2, 1.0, 0.1, 0).is_err(),
                "{bad}"
            );
        }
    }
}
