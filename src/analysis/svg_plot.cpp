#include "analysis/svg_plot.h"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

namespace moe::svg {

std::string escape(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (unsigned char c : s) {
    switch (c) {
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '&': out += "&amp;"; break;
      case '"': out += "&quot;"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      case '\r': out += "\\r"; break;
      default:
        if (c < 0x20) out += fmt::format("\\x{:02x}", c);
        else out += static_cast<char>(c);
    }
  }
  return out;
}

std::string palette(size_t i) {
  static const char* kColours[] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e",
                                   "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"};
  return kColours[i % (sizeof(kColours) / sizeof(kColours[0]))];
}

namespace {

std::string colour(double v, Scale s, double mid, double max) {
  if (!std::isfinite(v)) return "#dddddd";
  double t = 0;  // -1 .. 1
  switch (s) {
    case Scale::Diverging: t = std::clamp(std::log2(std::max(v, 1e-9) / mid) / 2.0, -1.0, 1.0); break;
    case Scale::Signed: t = std::clamp(v, -1.0, 1.0); break;
    case Scale::Sequential: {
      const double u = max > 0 ? std::clamp(v / max, 0.0, 1.0) : 0.0;
      const int r = static_cast<int>(255 - 205 * u), g = static_cast<int>(255 - 160 * u), b = static_cast<int>(255 - 75 * u);
      return fmt::format("rgb({},{},{})", r, g, b);
    }
  }
  const int fade = static_cast<int>(255 * (1.0 - std::abs(t)));
  return t >= 0 ? fmt::format("rgb(255,{},{})", fade, fade) : fmt::format("rgb({},{},255)", fade, fade);
}

std::string fmt_num(double v, int digits) {
  if (!std::isfinite(v)) return "–";
  if (std::abs(v) >= 1e4 || (std::abs(v) < 1e-3 && v != 0)) return fmt::format("{:.{}g}", v, std::max(2, digits));
  return fmt::format("{:.{}f}", v, digits);
}

}  // namespace

std::string heatmap(const Heatmap& h) {
  const int cell = h.cell, top = 34, lw = h.label_width;
  const int w = lw + static_cast<int>(h.cols.size()) * cell + 10;
  const int hgt = top + static_cast<int>(h.rows.size()) * cell + 8;
  double max = 0;
  for (const auto& r : h.values)
    for (double v : r)
      if (std::isfinite(v)) max = std::max(max, v);
  std::string s = fmt::format("<svg class=\"heatmap\" width=\"{}\" height=\"{}\" role=\"img\" aria-label=\"{}\">", w, hgt,
                              escape(h.title));
  if (!h.title.empty()) s += fmt::format("<text x=\"0\" y=\"13\" class=\"title\">{}</text>", escape(h.title));
  for (size_t c = 0; c < h.cols.size(); ++c)
    s += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>", lw + static_cast<int>(c) * cell + cell / 2,
                     top - 5, escape(h.cols[c]));
  for (size_t r = 0; r < h.rows.size(); ++r) {
    const int y = top + static_cast<int>(r) * cell;
    std::string label = h.rows[r];
    if (label.size() > 24) label = label.substr(0, 21) + "...";
    s += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>", lw - 5, y + cell / 2 + 4, escape(label));
    for (size_t c = 0; c < h.cols.size(); ++c) {
      const double v = r < h.values.size() && c < h.values[r].size() ? h.values[r][c] : NAN;
      const int x = lw + static_cast<int>(c) * cell;
      s += fmt::format("<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"{}\" stroke=\"#999\" stroke-width=\"0.5\">"
                       "<title>{} / {}: {} {}</title></rect>",
                       x, y, cell, cell, colour(v, h.scale, h.mid, max), escape(h.rows[r]), escape(h.cols[c]), h.value_name,
                       fmt_num(v, h.digits + 1));
      if (h.show_values && std::isfinite(v) && cell >= 26)
        s += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" class=\"cell\">{}</text>", x + cell / 2,
                         y + cell / 2 + 4, fmt_num(v, h.digits));
    }
  }
  s += "</svg>";
  return s;
}

std::string line_chart(const LineChart& c) {
  const int ml = 56, mr = 150, mt = 24, mb = 40;
  const int pw = c.width - ml - mr, ph = c.height - mt - mb;
  double x0 = INFINITY, x1 = -INFINITY, y0 = c.y_min, y1 = c.y_max;
  const bool auto_y = !(c.y_max > c.y_min);
  if (auto_y) {
    y0 = INFINITY;
    y1 = -INFINITY;
  }
  for (const Series& s : c.series)
    for (size_t i = 0; i < s.x.size() && i < s.y.size(); ++i) {
      if (!std::isfinite(s.x[i]) || !std::isfinite(s.y[i])) continue;
      x0 = std::min(x0, s.x[i]);
      x1 = std::max(x1, s.x[i]);
      if (auto_y) {
        y0 = std::min(y0, s.y[i]);
        y1 = std::max(y1, s.y[i]);
      }
    }
  if (!std::isfinite(x0)) x0 = 0, x1 = 1;
  if (!std::isfinite(y0)) y0 = 0, y1 = 1;
  if (auto_y) {
    y0 = std::min(y0, 0.0);
    y1 = y1 * 1.08 + 1e-12;
  }
  if (x1 <= x0) x1 = x0 + 1;
  if (y1 <= y0) y1 = y0 + 1;
  const bool logx = c.log_x && x0 > 0;
  auto X = [&](double x) {
    const double t = logx ? (std::log(x) - std::log(x0)) / (std::log(x1) - std::log(x0)) : (x - x0) / (x1 - x0);
    return ml + t * pw;
  };
  auto Y = [&](double y) { return mt + (1.0 - (y - y0) / (y1 - y0)) * ph; };
  std::string s = fmt::format("<svg class=\"chart\" width=\"{}\" height=\"{}\" role=\"img\" aria-label=\"{}\">", c.width,
                              c.height, escape(c.title));
  s += fmt::format("<text x=\"{}\" y=\"14\" class=\"title\">{}</text>", ml, escape(c.title));
  s += fmt::format("<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#888\"/>", ml, mt, pw, ph);
  for (int i = 0; i <= 4; ++i) {
    const double yv = y0 + (y1 - y0) * i / 4.0;
    s += fmt::format("<line x1=\"{}\" x2=\"{}\" y1=\"{:.1f}\" y2=\"{:.1f}\" stroke=\"#eee\"/>", ml, ml + pw, Y(yv), Y(yv));
    s += fmt::format("<text x=\"{}\" y=\"{:.1f}\" text-anchor=\"end\">{}</text>", ml - 4, Y(yv) + 4, fmt_num(yv, 2));
  }
  std::vector<double> ticks = c.x_ticks;
  if (ticks.empty())
    for (int i = 0; i <= 4; ++i) ticks.push_back(logx ? std::exp(std::log(x0) + (std::log(x1) - std::log(x0)) * i / 4.0) : x0 + (x1 - x0) * i / 4.0);
  for (double xv : ticks) {
    if (xv < x0 || xv > x1) continue;
    s += fmt::format("<text x=\"{:.1f}\" y=\"{}\" text-anchor=\"middle\">{}</text>", X(xv), mt + ph + 14, fmt_num(xv, xv == std::floor(xv) ? 0 : 2));
  }
  s += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>", ml + pw / 2, c.height - 6, escape(c.x_label));
  s += fmt::format("<text x=\"12\" y=\"{}\" text-anchor=\"middle\" transform=\"rotate(-90 12 {})\">{}</text>", mt + ph / 2,
                   mt + ph / 2, escape(c.y_label));
  for (const auto& [yv, label] : c.h_lines) {
    if (yv < y0 || yv > y1) continue;
    s += fmt::format("<line x1=\"{}\" x2=\"{}\" y1=\"{:.1f}\" y2=\"{:.1f}\" stroke=\"#555\" stroke-dasharray=\"2,3\"/>", ml, ml + pw,
                     Y(yv), Y(yv));
    s += fmt::format("<text x=\"{}\" y=\"{:.1f}\" class=\"note\">{}</text>", ml + 4, Y(yv) - 3, escape(label));
  }
  for (size_t k = 0; k < c.series.size(); ++k) {
    const Series& se = c.series[k];
    const std::string col = se.color.empty() ? palette(k) : se.color;
    std::string pts;
    for (size_t i = 0; i < se.x.size() && i < se.y.size(); ++i) {
      if (!std::isfinite(se.x[i]) || !std::isfinite(se.y[i])) continue;
      pts += fmt::format("{:.1f},{:.1f} ", X(se.x[i]), Y(se.y[i]));
    }
    s += fmt::format("<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"1.8\"{} points=\"{}\"><title>{}</title></polyline>", col,
                     se.dashed ? " stroke-dasharray=\"5,3\"" : "", pts, escape(se.name));
    for (size_t i = 0; i < se.x.size() && i < se.y.size(); ++i) {
      if (!std::isfinite(se.x[i]) || !std::isfinite(se.y[i])) continue;
      s += fmt::format("<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"2.5\" fill=\"{}\"><title>{}: ({}, {})</title></circle>", X(se.x[i]),
                       Y(se.y[i]), col, escape(se.name), fmt_num(se.x[i], 2), fmt_num(se.y[i], 4));
    }
    const int ly = mt + 10 + static_cast<int>(k) * 15;
    s += fmt::format("<line x1=\"{}\" x2=\"{}\" y1=\"{}\" y2=\"{}\" stroke=\"{}\" stroke-width=\"2\"{}/>", ml + pw + 8, ml + pw + 26,
                     ly - 4, ly - 4, col, se.dashed ? " stroke-dasharray=\"5,3\"" : "");
    s += fmt::format("<text x=\"{}\" y=\"{}\">{}</text>", ml + pw + 30, ly, escape(se.name));
  }
  s += "</svg>";
  return s;
}

std::string bar_chart(const Bars& b) {
  const int ml = 56, mr = 10, mt = 24, mb = 44;
  const int pw = b.width - ml - mr, ph = b.height - mt - mb;
  double y1 = 0;
  for (double v : b.values)
    if (std::isfinite(v)) y1 = std::max(y1, v);
  for (const auto& [yv, label] : b.h_lines) y1 = std::max(y1, yv);
  y1 = y1 * 1.1 + 1e-12;
  auto Y = [&](double y) { return mt + (1.0 - y / y1) * ph; };
  std::string s = fmt::format("<svg class=\"chart\" width=\"{}\" height=\"{}\" role=\"img\" aria-label=\"{}\">", b.width, b.height,
                              escape(b.title));
  s += fmt::format("<text x=\"{}\" y=\"14\" class=\"title\">{}</text>", ml, escape(b.title));
  s += fmt::format("<line x1=\"{}\" x2=\"{}\" y1=\"{}\" y2=\"{}\" stroke=\"#888\"/>", ml, ml + pw, mt + ph, mt + ph);
  for (int i = 0; i <= 4; ++i) {
    const double yv = y1 * i / 4.0;
    s += fmt::format("<text x=\"{}\" y=\"{:.1f}\" text-anchor=\"end\">{}</text>", ml - 4, Y(yv) + 4, fmt_num(yv, 2));
  }
  const size_t n = b.values.size();
  const double bw = n ? static_cast<double>(pw) / static_cast<double>(n) : 0;
  for (size_t i = 0; i < n; ++i) {
    const double v = std::isfinite(b.values[i]) ? b.values[i] : 0.0;
    const std::string col = i < b.colors.size() ? b.colors[i] : palette(0);
    s += fmt::format("<rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"{:.1f}\" height=\"{:.1f}\" fill=\"{}\"><title>{}: {}</title></rect>",
                     ml + i * bw + bw * 0.1, Y(v), bw * 0.8, mt + ph - Y(v), col, escape(i < b.labels.size() ? b.labels[i] : ""),
                     fmt_num(b.values[i], 4));
    if (n <= 40 && i < b.labels.size())
      s += fmt::format("<text x=\"{:.1f}\" y=\"{}\" text-anchor=\"middle\">{}</text>", ml + i * bw + bw / 2, mt + ph + 13,
                       escape(b.labels[i]));
  }
  for (const auto& [yv, label] : b.h_lines) {
    s += fmt::format("<line x1=\"{}\" x2=\"{}\" y1=\"{:.1f}\" y2=\"{:.1f}\" stroke=\"#c00\" stroke-dasharray=\"4,3\"/>", ml, ml + pw,
                     Y(yv), Y(yv));
    s += fmt::format("<text x=\"{}\" y=\"{:.1f}\" class=\"note\">{}</text>", ml + pw - 4, Y(yv) - 3, escape(label));
  }
  s += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>", ml + pw / 2, b.height - 6, escape(b.x_label));
  s += "</svg>";
  return s;
}

}  // namespace moe::svg
