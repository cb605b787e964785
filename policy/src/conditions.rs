//! CEL conditions over attestation predicates. A condition passes only when
//! it evaluates to `true`; an evaluation error (a missing field, a type
//! error) fails it, so a malformed predicate never slips through.

use cel::{Context, Program, Value};

/// A compiled condition.
pub struct Condition {
    /// The expression as written.
    pub source: String,
    /// Shown when it fails.
    pub message: Option<String>,
    program: Program,
}

impl std::fmt::Debug for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Condition")
            .field("source", &self.source)
            .finish()
    }
}

/// What a condition can see.
pub struct Inputs<'a> {
    /// The predicate document.
    pub predicate: &'a serde_json::Value,
    /// The whole statement.
    pub statement: &'a serde_json::Value,
    /// `{registry, repository, digest}`.
    pub image: &'a serde_json::Value,
}

impl Condition {
    /// Compiles an expression.
    pub fn compile(source: &str, message: Option<String>) -> Result<Self, String> {
        let program = Program::compile(source).map_err(|e| format!("CEL: {e}"))?;
        Ok(Condition {
            source: source.to_owned(),
            message,
            program,
        })
    }

    /// Evaluates; `Err` says why the condition failed.
    pub fn check(&self, inputs: &Inputs<'_>) -> Result<(), String> {
        let mut ctx = Context::default();
        for (name, v) in [
            ("predicate", inputs.predicate),
            ("statement", inputs.statement),
            ("image", inputs.image),
        ] {
            ctx.add_variable(name, cel::to_value(v).map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
        }
        let what = self.message.as_deref().unwrap_or(&self.source);
        match self.program.execute(&ctx) {
            Ok(Value::Bool(true)) => Ok(()),
            Ok(Value::Bool(false)) => Err(format!("condition failed: {what}")),
            Ok(other) => Err(format!("condition {what:?} gave {other:?}, not a boolean")),
            Err(e) => Err(format!("condition {what:?} could not be evaluated: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(src: &str, predicate: serde_json::Value) -> Result<(), String> {
        let c = Condition::compile(src, None)?;
        let empty = json!({});
        c.check(&Inputs {
            predicate: &predicate,
            statement: &empty,
            image: &json!({"registry":"r","repository":"a/b","digest":"sha256:x"}),
        })
    }

    #[test]
    fn true_false_and_errors() {
        assert!(run("size(predicate.components) > 0", json!({"components":[1]})).is_ok());
        assert!(run("size(predicate.components) > 0", json!({"components":[]})).is_err());
        // A missing field is an error, and an error fails the condition.
        assert!(run("predicate.nope == 1", json!({})).is_err());
        assert!(run("1 + 1", json!({})).is_err());
        assert!(
            run(
                "!predicate.components.exists(c, c.licenses.exists(l, l.license.id == 'GPL-3.0-only'))",
                json!({"components":[{"licenses":[{"license":{"id":"MIT"}}]}]})
            )
            .is_ok()
        );
        assert!(Condition::compile("((", None).is_err());
    }
}
