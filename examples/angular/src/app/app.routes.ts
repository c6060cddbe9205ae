import { Routes } from '@angular/router';

import { AccountPage } from './account.page';
import { AdminPage } from './admin.page';
import { authGuard } from './auth.guard';
import { HomePage } from './home.page';
import { ProductsPage } from './products.page';

export const routes: Routes = [
  { path: '', component: HomePage },
  { path: 'products', component: ProductsPage, canActivate: [authGuard] },
  { path: 'admin', component: AdminPage, canActivate: [authGuard] },
  { path: 'account', component: AccountPage, canActivate: [authGuard] },
  { path: '**', redirectTo: '' },
];
