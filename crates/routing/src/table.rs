//! The route table: routes in configuration order, the first that matches wins.

use crate::matcher::Matcher;
use crate::spec::{MatchSpec, RouteError};
use crate::RequestFacts;

/// A compiled route: its matcher and whatever the caller routes to (`T`).
#[derive(Debug, Clone)]
pub struct Route<T> {
    pub name: String,
    pub target: T,
    matcher: Matcher,
}

/// Routes in configuration order; the first that matches wins.
#[derive(Debug, Clone)]
pub struct RouteTable<T> {
    routes: Vec<Route<T>>,
}

impl<T> RouteTable<T> {
    /// Compiles specs in order. On error, returns the index of the offending spec.
    pub fn compile(
        specs: impl IntoIterator<Item = (String, MatchSpec, T)>,
    ) -> Result<Self, (usize, RouteError)> {
        let routes = specs
            .into_iter()
            .enumerate()
            .map(|(index, (name, spec, target))| {
                let matcher = Matcher::compile(&spec).map_err(|e| (index, e))?;
                Ok(Route {
                    name,
                    target,
                    matcher,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RouteTable { routes })
    }

    pub fn pick(&self, facts: &impl RequestFacts) -> Option<&Route<T>> {
        self.routes.iter().find(|r| r.matcher.matches(facts))
    }

    pub fn routes(&self) -> &[Route<T>] {
        &self.routes
    }
}
