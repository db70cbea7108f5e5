// The `moe analyze --html` report: one self-contained HTML file (inline SVG, no network, one tiny
// script that records JavaScript errors into the page for headless checks), drawn from the analysis
// JSON (RouteAnalysis::finish, plus "simulation" from the cache simulator). A summary comes first,
// then the plots: load, specialisation, co-activation and transitions, local routing consistency,
// super experts, and the cache simulation.
#pragma once
#include <string>

#include <nlohmann/json.hpp>

namespace moe {

std::string analysis_report_html(const nlohmann::ordered_json& analysis);

}  // namespace moe
