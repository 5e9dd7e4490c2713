#ifndef MOE_ROUTER_CLI_SVG_PLOT_H_
#define MOE_ROUTER_CLI_SVG_PLOT_H_

#include <string>
#include <vector>

namespace moe_router {

/// A minimal line plot written as SVG: axes with ticks, one polyline with
/// markers per series, point labels, and a legend. No dependencies.
struct PlotSeries {
  std::string name;
  std::vector<double> x, y;
  std::vector<std::string> labels;  // per point, may be empty
  bool dashed = false;              // set apart (e.g. the peers' policies)
};

struct Plot {
  std::string title, x_label, y_label;
  double x_min = 0, x_max = 1, y_min = 0, y_max = 1;
  std::vector<PlotSeries> series;
  /// Dashed horizontal and vertical guide lines (e.g. goals); NaN for none.
  double y_goal = 0.0 / 0.0, x_goal = 0.0 / 0.0;
};

std::string RenderSvg(const Plot& plot);

}  // namespace moe_router

#endif  // MOE_ROUTER_CLI_SVG_PLOT_H_
