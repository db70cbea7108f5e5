// Small inline-SVG plots for self-contained HTML reports (no scripts, no network): heatmaps, line
// charts and bar charts, with <title> tooltips. Values that are NaN are drawn as gaps (grey cells).
#pragma once
#include <string>
#include <vector>

namespace moe::svg {

std::string escape(const std::string& s);

enum class Scale {
  Diverging,  // blue below `mid`, white at it, red above (log2 of value / mid, saturating at 4x)
  Signed,     // blue for negative, red for positive, |v| <= 1 (nPMI)
  Sequential  // white to dark blue, 0 .. max
};

struct Heatmap {
  std::string title;
  std::vector<std::string> rows, cols;
  std::vector<std::vector<double>> values;  // [rows][cols]
  Scale scale = Scale::Sequential;
  double mid = 1.0;
  int cell = 28;
  int label_width = 150;
  bool show_values = true;
  int digits = 2;
  std::string value_name = "value";
};
std::string heatmap(const Heatmap& h);

struct Series {
  std::string name;
  std::vector<double> x, y;
  std::string color;
  bool dashed = false;
};
struct LineChart {
  std::string title, x_label, y_label;
  std::vector<Series> series;
  int width = 560, height = 300;
  bool log_x = false;
  double y_min = 0, y_max = 1;  // y_max <= y_min: from the data
  std::vector<double> x_ticks;  // empty: five ticks
  std::vector<std::pair<double, std::string>> h_lines;  // horizontal reference lines (y, label)
};
std::string line_chart(const LineChart& c);

struct Bars {
  std::string title, x_label, y_label;
  std::vector<std::string> labels;
  std::vector<double> values;
  std::vector<std::string> colors;  // per bar (empty: one colour)
  int width = 560, height = 220;
  std::vector<std::pair<double, std::string>> h_lines;
};
std::string bar_chart(const Bars& b);

// A colour for series i.
std::string palette(size_t i);

}  // namespace moe::svg
